#!/usr/bin/python3
"""`launch/run --launcher srun --retries 2` inside an allocation restarts a failed job:

  salloc --nodes=1 --ntasks=2 --cpus-per-task=1 launch/run --launcher srun --retries 2 -- \\
    --config configs/demo.toml (small world, a checkpoint every 8 steps)

Rank 1 (found by SLURM_PROCID among the tasks started with this test's tag) is SIGKILLed once
SFT has logged 10 steps, as a lost node would take it. srun (--kill-on-bad-exit) ends the step
with a failure; launch/run starts it again with --resume auto, inside the same allocation; the
second attempt resumes from the newest periodic checkpoint (step 8; 16 if the kill came late) and
the job ends with exit 0, the iteration reports and the final model of the uninterrupted job run
with mpirun -np 2 outside Slurm, byte for byte.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR, DNPO_TIME_SCALE. Skips (77) without Slurm or root.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import (BIN, BOUND_S, SFT_STEPS, SRC, Cluster, check, demo_sets,  # noqa: E402
                     run_reference, skip_unless_runnable, wait_for_sft_steps)
from mpi_jobs import dnpo_dist_environments  # noqa: E402  (tests/integration)
from selfplay_e2e import final_model, reports, same_result  # noqa: E402  (tests/integration)

EVERY = "checkpoint.every_steps=8"
KILL_AFTER = 10  # SFT steps logged before rank 1 is killed


def tagged_task(tag, rank):
    """The pid of the dnpo_dist task started with DNPO_SLURM_TAG=tag and SLURM_PROCID=rank."""
    for pid, env in dnpo_dist_environments():
        if (env.get(b"DNPO_SLURM_TAG") == tag.encode() and
                env.get(b"SLURM_PROCID") == str(rank).encode()):
            return pid
    return None


def main():
    skip_unless_runnable()
    work = tempfile.mkdtemp()
    try:
        run_reference(work, "reference", EVERY)
        ref_reports, ref_model = reports(work, "reference"), final_model(work, "reference")
        with Cluster() as cluster:
            tag = uuid.uuid4().hex
            cmd = ["salloc", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=10",
                   "launch/run", "--launcher", "srun", "--retries", "2", "--",
                   "--config", "configs/demo.toml", *demo_sets(work, "retried", EVERY)]
            proc = subprocess.Popen(cmd, cwd=SRC, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env=dict(cluster.env, DNPO_DIST=f"{BIN}/dnpo_dist",
                                             DNPO_SLURM_TAG=tag))
            try:
                wait_for_sft_steps(work, "retried", KILL_AFTER,
                                         lambda: proc.poll() is not None)
                pid = tagged_task(tag, 1)
                check(pid is not None, "no dnpo_dist task of rank 1 with this test's tag")
                os.kill(pid, signal.SIGKILL)
                out, _ = proc.communicate(timeout=BOUND_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        check(proc.returncode == 0, f"salloc launch/run: exit {proc.returncode}\n{out[-4000:]}")
        check(re.search(r"salloc: Granted job allocation \d+", out),
              f"salloc granted no allocation\n{out[-3000:]}")
        attempts = re.findall(r"launch/run: attempt (\d) of 3: srun --kill-on-bad-exit=1 "
                              r"--mpi=pmix ", out)
        check(attempts == ["1", "2"], f"launch/run's attempts: {attempts}\n{out[-4000:]}")
        failed = re.search(r"launch/run: exit (\d+); resuming from the newest valid checkpoint",
                           out)
        check(failed, f"launch/run did not report the failed attempt\n{out[-4000:]}")
        retry = out.split("launch/run: attempt 2 of 3: ", 1)[1]
        check(retry.split("\n", 1)[0].endswith(" --resume auto"),
              f"the retry has no --resume auto: {retry.splitlines()[0]}")
        resumed = re.search(r"resume: from (\S+\.h5)\n", retry)
        at = re.search(rf"resume: sft at step (\d+) of {SFT_STEPS}\n", retry)
        check(resumed and at, f"the retry did not resume in SFT\n{retry[-4000:]}")
        step = int(at.group(1))
        check(step % 8 == 0 and KILL_AFTER - 8 < step <= KILL_AFTER + 8,
              f"the retry resumed at step {step}, not from the newest periodic checkpoint")
        same_result(work, "retried", ref_reports, ref_model)
        print(f"retries: rank 1 killed after SFT step {KILL_AFTER}; srun failed (exit "
              f"{failed.group(1)}); launch/run's attempt 2 resumed from "
              f"{os.path.basename(resumed.group(1))} (step {step}) and completed", flush=True)
        print("retries: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
