#!/usr/bin/python3
"""Soak (label slow): the self-play loop on np 2 for three iterations (SPIN iteration 0, DNPO 1
and 2) against `dnpo_judge serve` with 20% of judge attempts failing, and one rank SIGKILLed at a
random moment twice, restarted each time by `launch/run --retries 3` (--resume auto).

It must end as the clean run does (same reports, same final model, byte for byte), and lose no
judged answer: every iteration's samples carry the clean run's verdicts, and the (prompt, answer)
pairs the judge scored are the clean run's; the verdicts asked again after a kill (those in flight
or received since the last checkpoint) are counted.

The faults hit a body's first two attempts only (judge.max_retries covers them), so every answer
is scored in the end, as in the clean run; a fault that changes the outcome (a judge that never
answers) is judge_faults.py's business. SOAK_SEED picks the kill moments and ranks.
Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpi_jobs  # noqa: E402
from checks import check  # noqa: E402
from selfplay_e2e import (BIN, SRC, Server, command, final_model, read_jsonl, reports,  # noqa: E402
                          same_result)

FAULTS = ["--p-500", "0.06", "--p-429", "0.04", "--p-drop", "0.04", "--p-malformed", "0.03",
          "--p-slow", "0.03", "--slow-ms", "300", "--retry-after-s", "1", "--faults-first-k", "2",
          "--seed", "7"]  # 20% of attempts
ITERATIONS = ("--set", "selfplay.iterations=2", "--set", "checkpoint.every_steps=1")
BOUND_S = 1500 * mpi_jobs.TIME_SCALE


def tagged_rank_pids(tag):
    """The dnpo_dist processes started with DNPO_SOAK_TAG=tag, by MPI rank."""
    return {int(env[b"OMPI_COMM_WORLD_RANK"]): pid
            for pid, env in mpi_jobs.dnpo_dist_environments()
            if env.get(b"DNPO_SOAK_TAG") == tag.encode() and b"OMPI_COMM_WORLD_RANK" in env}


def killer(tag, delays, rng, log):
    """Per attempt: waits for a new set of ranks, sleeps that attempt's delay, SIGKILLs one."""
    seen = set()
    for delay in delays:
        while True:
            ranks = tagged_rank_pids(tag)
            if len(ranks) == 2 and not set(ranks.values()) & seen:
                break
            time.sleep(0.2)
        seen |= set(ranks.values())
        time.sleep(delay)
        rank = rng.randrange(2)
        try:
            os.kill(ranks[rank], signal.SIGKILL)
            log.append((delay, rank))
            print(f"soak: SIGKILL to rank {rank} {delay:.1f} s into the attempt", flush=True)
        except ProcessLookupError:
            pass  # that attempt ended first: no kill counted


def answered(log):
    """The attempts the judge answered with a score ("slow" ones trickle out, but arrive)."""
    return [e["body"] for e in log if e["outcome"] in ("ok", "slow")]


def main():
    seed = int(os.environ.get("SOAK_SEED", str(random.SystemRandom().randrange(1 << 30))))
    rng = random.Random(seed)
    print(f"soak: SOAK_SEED={seed}", flush=True)
    work = tempfile.mkdtemp()

    # --- the clean run ---
    server = Server(work, "clean")
    start = time.monotonic()
    mpi_jobs.run(command(work, "clean", server.port, *ITERATIONS), "clean", BOUND_S)
    clean_s = time.monotonic() - start
    clean_log = server.stop()
    print(f"soak: clean run {clean_s:.0f} s, {len(clean_log)} judge requests", flush=True)

    # --- faults and two kills, launch/run restarting ---
    server = Server(work, "soak", *FAULTS)
    dist_args = command(work, "soak", server.port, *ITERATIONS)[4:]  # after "mpirun -np 2 ..."
    check(dist_args[0].endswith("/dnpo_dist"), dist_args)
    tag = uuid.uuid4().hex
    # The first kill anywhere in the middle of the run, the second in the middle of what is left
    # (the restart's resume overhead keeps it inside the second attempt).
    first = rng.uniform(0.3, 0.8) * clean_s
    delays = [first, rng.uniform(0.1, 0.7) * (clean_s - first)]
    kills = []
    thread = threading.Thread(target=killer, args=(tag, delays, rng, kills), daemon=True)
    thread.start()
    env = mpi_jobs.environment(DNPO_SOAK_TAG=tag, DNPO_DIST=dist_args[0])
    done = subprocess.run([f"{SRC}/launch/run", "--np", "2", "--retries", "3",
                           "--launcher-args", "--oversubscribe", "--", *dist_args[1:]],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=BOUND_S)
    out = done.stdout
    thread.join(timeout=5)
    log = server.stop()
    check(done.returncode == 0, f"soak: launch/run exit {done.returncode}\n{out[-4000:]}")
    check(len(kills) == 2, f"soak: {len(kills)} kills landed (the run ended first)\n{out[-3000:]}")
    restarts = out.count("resuming from the newest valid checkpoint")
    check(restarts == 2, f"soak: launch/run restarted {restarts} times\n{out[-4000:]}")
    faults = sum(e["outcome"] != "ok" for e in log)
    attempts = len(log)
    print(f"soak: {restarts} restarts; {faults} of {attempts} judge attempts met a fault "
          f"({faults / attempts:.0%})", flush=True)
    check(faults / attempts >= 0.1, "soak: the faults did not happen")

    # --- the same result, and no judged answer lost ---
    same_result(work, "soak", reports(work, "clean"), final_model(work, "clean"))
    for t in range(3):
        clean = read_jsonl(f"{work}/runs/clean/iter_{t}/samples.jsonl")
        soak = read_jsonl(f"{work}/runs/soak/iter_{t}/samples.jsonl")
        check(soak == clean, f"iteration {t}: samples or verdicts differ from the clean run")
    clean_bodies = set(answered(clean_log))
    soak_answers = answered(log)
    check(set(soak_answers) == clean_bodies, f"soak judged {len(set(soak_answers))} distinct "
          f"answers, the clean run {len(clean_bodies)}")
    again = len(soak_answers) - len(clean_bodies)
    print(f"soak: the {len(clean_bodies)} answers the clean run judged were judged, no other; "
          f"{again} verdicts asked again after the kills (in flight, or received after the last "
          f"checkpoint)")
    print(f"soak: OK (kills {[(round(d, 1), r) for d, r in kills]}, clean run {clean_s:.0f} s)")


if __name__ == "__main__":
    main()
