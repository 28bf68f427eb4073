#!/usr/bin/python3
"""dnpo_dist on several hosts: network namespaces made by hosts.sh (node0, node1, ... at
10.77.0.1, .2, ... on interface mh0), two ranks a host, mpirun on node0 starting orted on the
others through hosts.sh's launch agent. The job is exact_resume.py's NPO run (32 steps).

  train:       2 hosts x 2 ranks, store at rank 0's hostname (node0 = 10.77.0.1), Gloo on
               dist.interface = "mh0" -> every step's losses and every final tensor as np 4 on
               one host (within the np tests' tolerances), and the traffic went over mh0
  resume:      2 x 2 with dist.host = "10.77.0.1", periodic checkpoints into one directory ->
               each resumes on one host at np 1 or 2 and ends as the 2 x 2 run did
  kill:        launch/run --retries 1 over 2 x 2; node1's ranks SIGKILLed mid-step -> the attempt
               ends within dist.timeout_s naming a lost rank; the retry resumes from the newest
               checkpoint and ends bit-identical to an uninterrupted 2 x 2 run
  unreachable: ranks cannot reach rank 0 or each other (dist.host = "127.0.0.1" or
               "10.77.0.99", dist.interface = "lo" or "nosuch0") -> the job fails within
               dist.timeout_s (plus start-up) with a message naming the address and the interface

Skips (exit 77, saying why) where network namespaces cannot be made (not root, no `ip`).
Usage: multihost.py train|resume|kill|unreachable
Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR, DNPO_TIME_SCALE (multiplies the time bounds).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import exact_resume as job  # noqa: E402
import harness  # noqa: E402
import mpi_jobs  # noqa: E402
from checks import TIME_SCALE, check  # noqa: E402

SRC = os.environ["DNPO_SOURCE_DIR"]
NP = 4
BOUND_S = 180 * TIME_SCALE  # one run of the job (an idle 2-core machine takes about 10 s)


def run(argv, what):
    return mpi_jobs.run(argv, what, BOUND_S)


def reference_np4(work, name="np4"):
    """The job at np 4 on this machine, outside the hosts: (losses, final checkpoint)."""
    run(job.command(work, name, NP), name)
    return job.metrics(work, name), job.final_checkpoint(work, name)


def two_hosts_case(work, hosts):
    """train: 2 x 2 equals np 4 on one host."""
    ref_rows, ref_final = reference_np4(work)
    before = hosts.received_bytes("node1")
    out = run(hosts.mpirun(NP, job.train_args(work, "hosts", "--set",
                                              f'dist.interface="{harness.INTERFACE}"')),
              "2 hosts x 2 ranks")
    received = hosts.received_bytes("node1") - before
    # On several nodes the store defaults to rank 0's hostname (127.0.0.1 on one node).
    check(re.search(r"dist: 4 ranks, gloo, store node0:\d+", out),
          f"the store is not at rank 0's host node0:\n{out[-3000:]}")
    job.close_run(work, "hosts", ref_rows, ref_final, "np 4 on one host")
    # Every step all-gathers the parameters and reduce-scatters the gradients (0.8M fp32 values
    # each): node1's two ranks receive far more than 32 x 3 MB over mh0.
    check(received > 32 * 3e6, f"node1 received only {received} bytes on mh0")
    print(f"train: node1 received {received / 1e6:.0f} MB on {harness.INTERFACE}")


def resume_case(work, hosts):
    """resume: the checkpoints of a 2 x 2 run resume on one host at np 1 and 2."""
    every = ("--set", "checkpoint.every_steps=8", "--set", "checkpoint.keep_last=8")
    run(hosts.mpirun(NP, job.train_args(work, "hosts", "--set",
                                        f'dist.host="{hosts.address(0)}"', *every)),
        "2 hosts x 2 ranks")
    ref_rows = job.metrics(work, "hosts")
    ref_final = job.final_checkpoint(work, "hosts")
    folder = job.checkpoint_dir(work, "hosts")
    periodic = sorted(f for f in os.listdir(folder) if f.endswith(".h5"))
    steps = [job.steps_done(f"{folder}/{f}") for f in periodic]
    check(steps == [8, 16, 24, 32], f"checkpoints at steps {steps}, expected 8, 16, 24, 32")
    for path, step, np_ in zip(periodic[:3], steps, (1, 2, 1)):
        name = f"from{step}_np{np_}"
        os.makedirs(f"{work}/runs/{name}")
        with open(f"{work}/runs/{name}/metrics.jsonl", "w") as f:  # the steps before, as logged
            f.writelines(json.dumps(r) + "\n" for r in ref_rows if r["step"] <= step)
        out = run(job.command(work, name, np_, "--resume", f"{folder}/{path}"), name)
        job.resumed_from(name, out, f"{folder}/{path}", step)
        job.close_run(work, name, ref_rows, ref_final, "the 2 x 2 run")


def kill_case(work, hosts):
    """kill: node1's ranks killed mid-step; launch/run resumes the job on the hosts."""
    timeout_s = 30 * TIME_SCALE
    every = ("--set", "checkpoint.every_steps=4", "--set", f"dist.timeout_s={timeout_s}")
    run(hosts.mpirun(NP, job.train_args(work, "reference", *every)), "uninterrupted 2 x 2")
    ref_rows = job.metrics(work, "reference")
    ref_final = job.final_checkpoint(work, "reference")
    # What a user runs on real nodes, with launch/run started on the first one.
    cmd = hosts.on("node0", [f"{SRC}/launch/run", "--np", str(NP), "--retries", "1",
                             "--launcher-args", hosts.launcher_args, "--",
                             *job.train_args(work, "killed", *every)[1:]])
    env = mpi_jobs.environment(DNPO_DIST=job.BIN)
    started = harness.Job(cmd, env)
    deadline = time.monotonic() + BOUND_S
    while job.steps_logged(work, "killed") < 6:  # a step after the checkpoint of step 4
        check(started.proc.poll() is None, lambda: f"ended before step 6:\n{started.output()}")
        check(time.monotonic() < deadline, f"no step 6 in {BOUND_S} s")
        started.wait_for(r"(?!)", 0.01)
    ranks = mpi_jobs.ranks_among(hosts.pids("node1"))
    check(sorted(ranks) == [2, 3], f"node1 runs ranks {sorted(ranks)}, expected 2 and 3")
    killed_at = time.monotonic()
    for pid in ranks.values():
        os.kill(pid, signal.SIGKILL)
    lost_steps = job.steps_logged(work, "killed")
    lost = started.wait_for(r"launch/run: exit \d+; resuming", timeout_s)
    check(lost is not None, lambda: f"the attempt did not end within dist.timeout_s = "
          f"{timeout_s} s of the kill:\n{started.output()[-4000:]}")
    took = lost[0] - killed_at
    named = re.search(r".*process rank [23] with PID \d+ on node node1 exited on signal 9.*",
                      started.output())
    check(named, lambda: f"no message naming a lost rank:\n{started.output()[-4000:]}")
    code, out = started.finish(BOUND_S)
    check(code == 0, f"launch/run: exit {code}\n{out[-4000:]}")
    check("launch/run: attempt 2 of 2" in out, f"no second attempt:\n{out[-4000:]}")
    # The newest checkpoint when the ranks died, or the one before if they died saving it.
    resumed = re.search(rf"resume: npo at step (\d+) of {job.STEPS}\n", out)
    check(resumed, f"the retry did not resume:\n{out[-4000:]}")
    step = int(resumed.group(1))
    check(step % 4 == 0 and lost_steps - 8 < step <= lost_steps,
          f"the retry resumed after step {step}; {lost_steps} steps were logged at the kill")
    job.same_run(work, "killed", ref_rows, ref_final)
    print(f"kill: node1's ranks 2 and 3 killed after step {lost_steps}; the attempt ended "
          f"{took:.1f} s later (dist.timeout_s = {timeout_s}): {named.group(0).strip()}; the "
          f"retry resumed after step {step}")


def unreachable_case(work, hosts):
    """unreachable: wrong dist.host or dist.interface fail fast, naming address and interface."""
    timeout_s = 10
    slack_s = 60 * TIME_SCALE  # start-up and teardown of the 4 ranks on a busy machine
    cases = [
        # the one-node default, given by hand: node1's ranks look for the store on themselves
        ('dist.host="127.0.0.1"', [r"127\.0\.0\.1:\d+", r"\blo\b"]),
        # an address on the hosts' network that rank 0 does not hold: it cannot serve there
        ('dist.host="10.77.0.99"', [r"10\.77\.0\.99:\d+ on node0 \(via interface mh0",
                                    r"not an address of rank 0's node; its interfaces: .*mh0 "
                                    r"10\.77\.0\.1"]),
        # Gloo on the loopback: each rank offers 127.0.0.1 to the others
        ('dist.interface="lo"', [r"127\.0\.0\.1", r'dist\.interface = "lo"']),
        # an interface this host lacks
        ('dist.interface="nosuch0"', [r'dist\.interface = "nosuch0"', rf"{harness.INTERFACE} "
                                      r"10\.77\.0\.\d"]),
    ]
    for setting, expected in cases:
        start = time.monotonic()
        done = subprocess.run(hosts.mpirun(NP, job.train_args(
            work, "unreachable", "--set", setting, "--set", f"dist.timeout_s={timeout_s}")),
            env=mpi_jobs.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout_s + slack_s)
        took = time.monotonic() - start
        out = done.stdout
        check(done.returncode != 0, f"{setting}: exit 0\n{out[-3000:]}")
        fatal = [line for line in out.splitlines() if "fatal on rank" in line]
        check(fatal, f"{setting}: no fatal message\n{out[-3000:]}")
        for pattern in expected:
            check(any(re.search(pattern, line) for line in fatal),
                  f"{setting}: no fatal message matches {pattern!r}:\n" + "\n".join(fatal))
        check(" step 1/" not in out, f"{setting}: the job trained\n{out[-3000:]}")
        print(f"{setting}: exit {done.returncode} after {took:.1f} s (dist.timeout_s = "
              f"{timeout_s}); {fatal[0].strip()[:400]}")


CASES = {"train": two_hosts_case, "resume": resume_case, "kill": kill_case,
         "unreachable": unreachable_case}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(f"usage: multihost.py {'|'.join(CASES)}")
        return 2
    harness.skip_unless_possible()
    work = tempfile.mkdtemp()
    try:
        job.write_pairs(f"{work}/pairs.jsonl")
        with harness.Hosts(2) as hosts:
            CASES[sys.argv[1]](work, hosts)
        print(f"multihost {sys.argv[1]}: OK")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
