#!/usr/bin/python3
"""judge.concurrency and judge.requests_per_minute hold for the whole job, not per rank: the
self-play loop's iteration 0 at np 2 (both ranks judging their answers over HTTP) against a real
`dnpo_judge serve`, whose request log records when each request arrived and how many were
being answered then.

  concurrency: job-wide judge.concurrency = 3 (ranks hold 2 + 1), every reply 150 ms late: the
               server never has more than 3 requests in flight, and reaches 3.
  rate:        job-wide judge.requests_per_minute = 1200 (20/s), no latency: over the run the
               arrival rate is at most 20/s (+5%), the busiest 20 requests arrive at no less than
               70% of it (the limit binds), and no one-second window holds more than 30 (each rank's
               first request, timer slack).
  progress:    the run's progress line shows judged / pending / failed and requests/s.
  secrecy:     the judge's API key (the server requires it) appears in no output and in no file
               the runs wrote (metrics, resolved config, checkpoints, samples, logs).

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import json
import os
import tempfile

import mpi_jobs
from judge_faults import KEY, Server, check, read_jsonl

BIN = os.environ["DNPO_BIN"]
SRC = os.environ["DNPO_SOURCE_DIR"]
TEMPLATE = f"{SRC}/configs/judge/default_0_100.txt"
PROMPTS = 60  # 120 requests: each prompt's human and generated answer (a random model repeats none)


def selfplay_iteration0(work, name, port, *sets):
    cmd = ["mpirun", "-np", "2", "--oversubscribe", f"{BIN}/dnpo_dist", "run",
           "--config", f"{SRC}/configs/demo.toml",
           "--set", f'run.out_dir="{work}/runs"', "--set", f'run.name="{name}"',
           "--set", f'data.train_file="{work}/data/train.jsonl"',
           "--set", f'data.eval_file="{work}/data/eval.jsonl"',
           "--set", f"demo.train_size={PROMPTS}", "--set", "selfplay.sft=false",
           "--set", "selfplay.iterations=0", "--set", "selfplay.eval_each_iteration=false",
           "--set", "run.log_every=1",
           "--set", 'judge.backend="http"', "--set", f'judge.base_url="http://127.0.0.1:{port}"',
           "--set", f'judge.template="{TEMPLATE}"', "--set", 'judge.api_key_env="DNPO_TEST_JUDGE_KEY"',
           *[a for s in sets for a in ("--set", s)]]
    out = mpi_jobs.run(cmd, name, timeout=600 * mpi_jobs.TIME_SCALE)
    report = read_jsonl(f"{work}/runs/{name}/selfplay.jsonl")[-1]
    return out, report


def main():
    work = tempfile.mkdtemp(prefix="dnpo_judge_limits_")
    os.environ["DNPO_TEST_JUDGE_KEY"] = KEY  # the server and both ranks read it
    outputs = []

    # --- concurrency ---
    server = Server(work, "concurrency", "--latency-ms", "150", "--api-key-env",
                    "DNPO_TEST_JUDGE_KEY")
    out, report = selfplay_iteration0(work, "concurrency", server.port, "judge.concurrency=3")
    outputs.append(out)
    log = server.stop()
    check(len(log) == report["judge_requests"] and len(log) >= PROMPTS,
          f"{len(log)} requests logged, the loop reports {report['judge_requests']}")
    peak = max(e["in_flight"] for e in log)
    check(peak == 3, f"job-wide concurrency 3: the server saw up to {peak} requests at once")
    # an independent recount from the intervals [t_start, t): the most overlapping at once
    events = sorted([(e["t_start"], 1) for e in log] + [(e["t"], -1) for e in log])
    overlap = most = 0
    for _, step in events:
        overlap += step
        most = max(most, overlap)
    check(most <= 3, f"recounted from arrival and reply times: {most} requests at once")
    print(f"concurrency: {len(log)} requests, at most {peak} in flight (limit 3 for 2 ranks)")
    progress = [line for line in out.splitlines() if "req/s" in line and "judged" in line]
    check(progress, f"no judge progress on the progress line:\n{out[-3000:]}")
    check(f"judge: {len(log)} judged, 0 pending, 0 failed" in out,
          f"the progress never showed all {len(log)} judged:\n" + "\n".join(progress))
    print(f"progress: {progress[-1].strip()}")

    # --- requests per minute ---
    rate = 20.0
    server = Server(work, "rate", "--api-key-env", "DNPO_TEST_JUDGE_KEY")
    out, report = selfplay_iteration0(work, "rate", server.port, "judge.concurrency=8",
                                      f"judge.requests_per_minute={rate * 60:.0f}")
    outputs.append(out)
    log = server.stop()
    starts = sorted(e["t_start"] for e in log)
    check(len(starts) == report["judge_requests"], f"{len(starts)} logged")
    mean_rate = (len(starts) - 1) / (starts[-1] - starts[0])
    check(mean_rate <= rate * 1.05, f"arrival rate {mean_rate:.2f}/s over a limit of {rate}/s")
    # The limit binds: the human answers (half the requests) are all queued at the start, so the
    # busiest run of 20 requests arrives at the limit, however long the ranks then take to
    # generate the rest (which the mean over the whole run counts).
    k = 20
    busiest = max((k - 1) / max(1e-9, starts[i + k - 1] - starts[i])
                  for i in range(len(starts) - k + 1))
    check(busiest >= rate * 0.7,
          f"the busiest {k} requests arrived at {busiest:.2f}/s: the limit did not bind")
    # A one-second window may also catch each rank's undelayed first request and requests whose
    # timers fired late on a loaded machine; the long-run rate above is the strict bound.
    worst = max(sum(1 for u in starts if s <= u < s + 1.0) for s in starts)
    check(worst <= rate * 1.5, f"{worst} requests arrived within one second (limit {rate}/s)")
    print(f"rate: {len(starts)} requests at {mean_rate:.2f}/s (limit {rate}/s), the busiest {k} "
          f"at {busiest:.2f}/s, at most {worst} in any second")

    # --- the key is nowhere ---
    check(all(e["outcome"] == "ok" for e in log), "requests were refused: the key was not sent")
    for text in outputs:
        check(KEY not in text, "the API key appears in a run's output")
    files = 0
    for folder, _, names in os.walk(work):
        for name in names:
            files += 1
            with open(os.path.join(folder, name), "rb") as f:
                check(KEY.encode() not in f.read(), f"the API key appears in {folder}/{name}")
    check(files > 10, f"only {files} files were written")
    print(f"secrecy: the key is in none of {files} files and no output")
    print("judge_limits: all checks passed")


if __name__ == "__main__":
    main()
