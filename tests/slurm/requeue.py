#!/usr/bin/python3
"""Preemption under Slurm: `sbatch launch/slurm.sbatch configs/demo.toml` (small world) signalled
as Slurm does before the time limit (the script's --signal=B:USR1@300), here at once with
`scancel --signal=USR1 --batch JOB` once SFT has logged a few steps. The signal reaches the batch
script (launch/run, exec'd), which passes SIGUSR1 to srun, which passes it to the ranks:

  - the ranks save a checkpoint at the next step boundary and exit 0, naming it;
  - launch/run requeues the job (`scontrol requeue`); Slurm starts it again (Restarts=1);
  - the second start resumes from that checkpoint (--resume auto) and the job ends COMPLETED;
  - its iteration reports and final model are those of the uninterrupted job run with
    mpirun -np 2 outside Slurm, byte for byte (selfplay_e2e.same_result).

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR, DNPO_TIME_SCALE. Skips (77) without Slurm or root.
"""
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import (BIN, BOUND_S, CPU_NODE, SFT_STEPS, Cluster, check, demo_sets,  # noqa: E402
                     read, run_reference, skip_unless_runnable, wait_for_sft_steps)
from selfplay_e2e import final_model, reports, same_result  # noqa: E402  (tests/integration)

SIGNAL_AFTER = 5  # SFT steps logged before the signal (of 38: a wide margin on a busy machine)


def main():
    skip_unless_runnable()
    work = tempfile.mkdtemp()
    try:
        run_reference(work, "reference")
        ref_reports, ref_model = reports(work, "reference"), final_model(work, "reference")
        with Cluster() as cluster:
            out = f"{work}/job.out"
            job_id = cluster.sbatch(*CPU_NODE, f"--output={out}", "launch/slurm.sbatch",
                                    "configs/demo.toml", *demo_sets(work, "requeued"),
                                    env={"DNPO_DIST": f"{BIN}/dnpo_dist"})
            wait_for_sft_steps(work, "requeued", SIGNAL_AFTER,
                                     lambda: cluster.job_ended(job_id))
            cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))
            job = cluster.wait_job(job_id, BOUND_S)
            log = read(out)
            check(job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0",
                  f"job {job_id}: {job['JobState']} exit {job['ExitCode']}\n{log[-4000:]}")
            check(job["Restarts"] == "1", f"job {job_id}: Restarts={job['Restarts']}, not 1")

            stop = re.search(r"stopped on signal 10 after step (\d+); resume with --resume auto "
                             r"\((\S+\.h5)\)", log)
            check(stop, f"no rank saved and stopped on SIGUSR1\n{log[-4000:]}")
            step, path = int(stop.group(1)), stop.group(2)
            check(SIGNAL_AFTER <= step < SFT_STEPS, f"stopped after SFT step {step}")
            check(f"launch/run: stopped on request with a checkpoint saved; requeueing job "
                  f"{job_id}\n" in log, f"launch/run did not requeue the job\n{log[-4000:]}")
            first, _, second = log.partition(f"slurm.sbatch: job {job_id} on {cluster.host}, "
                                             "start 2\n")
            check(second, f"the job did not start a second time\n{log[-4000:]}")
            check(f"resume: from {path}\n" in second and
                  f"resume: sft at step {step} of {SFT_STEPS}\n" in second,
                  f"the second start did not resume from {path} at step {step}\n"
                  f"{second[-4000:]}")
            check("self-play done" not in first and "self-play done" in second,
                  "the run did not end in the second start only")
            same_result(work, "requeued", ref_reports, ref_model)
            print(f"requeue: job {job_id} stopped after SFT step {step} on SIGUSR1 "
                  f"({os.path.basename(path)}), requeued, resumed from it and completed",
                  flush=True)
        print("requeue: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
