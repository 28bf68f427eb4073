#!/usr/bin/python3
"""`sbatch launch/slurm.sbatch configs/demo.toml` on a one-node Slurm cluster (cluster.py), with
the demo world shrunk by --set and the script's GPU-node #SBATCH lines overridden for one CPU
node: the batch script runs launch/run, which starts the 2 ranks with srun --mpi=pmix; the job
ends COMPLETED with exit 0 after the whole self-play loop (SFT, SPIN iteration 0, DNPO
iteration 1; both iteration reports and the final model written), as one world of 2 ranks.

Also the MPI plugin (docs/cluster.md, "Slurm"): srun offers pmix, and Debian's Open MPI starts
under it only: with srun's default plugin (none) and with pmi2 every task's MPI_Init fails,
saying Open MPI was not built with Slurm's PMI support.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR, DNPO_TIME_SCALE. Skips (77) without Slurm or root.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import (BIN, BOUND_S, CPU_NODE, SRC, Cluster, check, demo_sets, read,  # noqa: E402
                     skip_unless_runnable)
from selfplay_e2e import read_jsonl  # noqa: E402  (tests/integration)


def check_plugins(cluster, work):
    listed = cluster.run("srun", "--mpi=list").stdout
    check("pmix" in listed.split(), f"srun --mpi=list has no pmix:\n{listed}")
    for plugin in ("none", "pmi2"):
        done = cluster.run("srun", f"--mpi={plugin}", "--ntasks=2", "--cpus-per-task=1",
                           f"{BIN}/dnpo_dist", "demo-data", "--config",
                           f"{SRC}/configs/demo.toml", "--out", f"{work}/{plugin}",
                           check_exit=False)
        check(done.returncode != 0, f"srun --mpi={plugin}: exit 0; Open MPI started without "
              f"PMIx\n{done.stdout[-2000:]}")
        check("not built with SLURM's PMI support" in done.stdout,
              f"srun --mpi={plugin}: failed otherwise than Open MPI refusing the plugin\n"
              f"{done.stdout[-2000:]}")
    print("plugins: srun lists pmix; under --mpi=none (the default) and --mpi=pmi2 Open MPI's "
          "MPI_Init fails (not built with Slurm's PMI support)", flush=True)


def main():
    skip_unless_runnable()
    work = tempfile.mkdtemp()
    try:
        with Cluster() as cluster:
            check_plugins(cluster, work)
            out = f"{work}/job.out"
            job_id = cluster.sbatch(*CPU_NODE, f"--output={out}", "launch/slurm.sbatch",
                                    "configs/demo.toml", *demo_sets(work, "sbatch"),
                                    env={"DNPO_DIST": f"{BIN}/dnpo_dist"})
            job = cluster.wait_job(job_id, BOUND_S)
            log = read(out)
            check(job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0",
                  f"job {job_id}: {job['JobState']} exit {job['ExitCode']}\n{log[-4000:]}")
            check(f"slurm.sbatch: job {job_id} on {cluster.host}, start 1\n" in log,
                  f"no line from the batch script\n{log[-3000:]}")
            check("launch/run: attempt 1 of 4: srun --kill-on-bad-exit=1 --mpi=pmix " in log,
                  f"launch/run did not start the ranks with srun --mpi=pmix\n{log[-3000:]}")
            check("dist: 2 ranks" in log, f"not one world of 2 ranks\n{log[-3000:]}")
            check("self-play done" in log, f"the run did not end\n{log[-3000:]}")
            run_dir = f"{work}/runs/sbatch"
            rows = read_jsonl(f"{run_dir}/selfplay.jsonl")
            check([r.get("iteration") for r in rows[1:]] == [0, 1],
                  f"iteration reports: {rows}")
            check(os.path.getsize(f"{run_dir}/final/model.safetensors") > 0, "no final model")
            print(f"sbatch: job {job_id} COMPLETED: SFT, iterations 0 and 1 through "
                  "launch/run and srun --mpi=pmix at 2 ranks; final model written", flush=True)
        print("sbatch_demo: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
