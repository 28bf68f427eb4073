#!/usr/bin/python3
"""Faults in a 2-rank dnpo_dist job end every rank with a clear message, never a hang.

  throw: rank 1 throws at step 3 (DNPO_TEST_FAIL) -> "fatal on rank 1 of 2", MPI_Abort, exit != 0
  kill:  rank 1 gets SIGKILL mid-run -> mpirun names rank 1 and ends the job, exit != 0
  stall: rank 1 is stopped (SIGSTOP) -> rank 0's collective times out after dist.timeout_s,
         "fatal on rank 0 of 2 ... failed (timeout", exit != 0

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpi_jobs  # noqa: E402
from mpi_jobs import rank_pid  # noqa: E402

BIN = os.path.join(os.environ["DNPO_BIN"], "dnpo_dist")
SRC = os.environ["DNPO_SOURCE_DIR"]
TIMEOUT_S = 5  # dist.timeout_s of the stall case
BOUND_S = 60 * mpi_jobs.TIME_SCALE  # every case ends well within this (a functional bound)


def command(work, name, *extra):
    return ["mpirun", "-np", "2", "--oversubscribe", BIN, "sft",
            "--config", f"{SRC}/configs/demo.toml",
            "--set", f'run.out_dir="{work}/runs"', "--set", f'run.name="{name}"',
            "--set", f'data.train_file="{work}/data/train.jsonl"',
            "--set", f'data.eval_file="{work}/data/eval.jsonl"',
            "--set", "train.micro_batch_size=32", "--set", "train.batch_size=64",
            "--set", "run.log_every=1", "--set", "train.max_steps=400", *extra]


def environment(**extra):
    return mpi_jobs.environment(DNPO_PROGRESS="1", **extra)


def run_until_step(cmd, env, step, action):
    """Starts the job, waits for rank 0 to report `step`, applies action(mpirun pid), then
    returns (exit code, output, seconds from the action to the end)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    marker = re.compile(rf"sft {step}/")
    for line in proc.stdout:
        lines.append(line)
        if marker.search(line):
            break
    else:
        raise AssertionError("the job ended before step %d:\n%s" % (step, "".join(lines)))
    action(proc.pid)
    start = time.monotonic()
    try:
        rest, _ = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the job still runs {BOUND_S} s after the fault: a hang")
    return proc.returncode, "".join(lines) + rest, time.monotonic() - start


def expect(cond, what, output):
    if not cond:
        print(output[-4000:])
        raise AssertionError(what)


def main():
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([BIN, "demo-data", "--config", f"{SRC}/configs/demo.toml",
                        "--set", f'data.train_file="{work}/data/train.jsonl"',
                        "--set", f'data.eval_file="{work}/data/eval.jsonl"',
                        "--set", "demo.train_size=2000", "--set", "demo.eval_size=50"],
                       check=True, env=environment())

        # --- throw: an exception on rank 1 at step 3 ---
        start = time.monotonic()
        res = subprocess.run(command(work, "throw"), env=environment(DNPO_TEST_FAIL="1:3"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=BOUND_S * 3)
        took = time.monotonic() - start
        out = res.stdout
        expect(res.returncode != 0, "throw: the job exited 0", out)
        expect("fatal on rank 1 of 2: injected failure at step 3" in out,
               "throw: no message naming rank 1 and the cause", out)
        expect("sft 4/" not in out, "throw: the job went on past the failed step", out)
        print(f"throw: exit {res.returncode} after {took:.1f} s; "
              f"{[l for l in out.splitlines() if 'fatal' in l][0].strip()}")

        # --- kill: SIGKILL to rank 1 after step 3 ---
        code, out, took = run_until_step(
            command(work, "kill"), environment(), 3,
            lambda pid: os.kill(rank_pid(pid, 1), signal.SIGKILL))
        expect(code != 0, "kill: the job exited 0", out)
        expect(re.search(r"rank 1 .*signal 9", out) is not None,
               "kill: no message naming rank 1", out)
        print(f"kill: exit {code}, {took:.1f} s after the kill; "
              f"{[l for l in out.splitlines() if 'signal 9' in l][0].strip()}")

        # --- stall: rank 1 stopped; rank 0 must time out within dist.timeout_s ---
        stopped = []

        def stop(pid):
            stopped.append(rank_pid(pid, 1))
            os.kill(stopped[0], signal.SIGSTOP)

        code, out, took = run_until_step(
            command(work, "stall", "--set", f"dist.timeout_s={TIMEOUT_S}"), environment(), 3,
            stop)
        for pid in stopped:  # in case it survived the abort
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        expect(code != 0, "stall: the job exited 0", out)
        expect(re.search(r"fatal on rank 0 of 2: .*failed \(timeout 5000 ms\)", out) is not None,
               "stall: rank 0 did not report the timed-out collective", out)
        # the timeout, then the abort: 30 s of slack (scaled) for a busy machine's teardown
        slack_s = 30 * mpi_jobs.TIME_SCALE
        expect(took < TIMEOUT_S + slack_s, f"stall: took {took:.1f} s after the stop", out)
        print(f"stall: exit {code}, {took:.1f} s after the stop (timeout {TIMEOUT_S} s); "
              f"{[l for l in out.splitlines() if 'fatal' in l][0].strip()[:160]}")


if __name__ == "__main__":
    sys.exit(main())
