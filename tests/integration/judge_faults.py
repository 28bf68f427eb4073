#!/usr/bin/python3
"""dnpo_judge score (the HTTP JudgeClient) against a real `dnpo_judge serve` on 127.0.0.1.

  faults:   30% of first and second attempts meet a fault (429 with Retry-After, 500, dropped
            connection, slow reply past the client's deadline, truncated JSON): every answer is
            scored exactly once, with the rule judge's score, and the client's attempts agree
            with the server's request log line by line; each retry after a 429 comes no earlier
            than Retry-After; every slow reply (deadline exceeded) was retried.
  outage:   every attempt gets 500: after max_retries the fallback (SPIN labeling) is applied
            and counted; under failure_policy "fail" the run ends with exit 1 and a clear error.
  auth:     a wrong API key gets 401, which is not retried; neither is an exhausted quota (429
            insufficient_quota) nor a wrong path (404).
  secrecy:  the API key appears in no output and no file the runs wrote.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile

from checks import TIME_SCALE

BIN = os.path.join(os.environ["DNPO_BIN"], "dnpo_judge")
SRC = os.environ["DNPO_SOURCE_DIR"]
TEMPLATE = f"{SRC}/configs/judge/default_0_100.txt"
KEY = "sk-dnpo-test-7f3a9c1e5b"  # must never be written anywhere
OUTPUTS = []  # every stdout/stderr text the runs produced
# The client's deadline on one attempt, and how long a "slow" fault takes to reply: a reply takes
# milliseconds, so a busy machine stays far inside the deadline, and a slow one (a sleep) cannot
# beat it however fast the machine.
JUDGE_TIMEOUT_S = 2.0 * TIME_SCALE
SLOW_MS = int(3000 * JUDGE_TIMEOUT_S)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def answers(n):
    """Demo-world prompts with right and wrong answers."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            a, b = 17 * i + 3, 29 * i + 11
            prompt, truth = f"{a}+{b}=", str(a + b)
        elif i % 3 == 1:
            s = "".join(chr(97 + (i * 7 + k * 3) % 26) for k in range(6))
            prompt, truth = f"rev {s}", s[::-1]
        else:
            d = str(10007 * i + 12345)[-5:]
            prompt, truth = f"sort {d}", "".join(sorted(d))
        answer = truth if i % 4 else truth[::-1] + "1"
        rows.append({"id": f"a{i:03d}", "prompt": prompt, "answer": answer})
    check(len({(r["prompt"], r["answer"]) for r in rows}) == n, "answers are not unique")
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Server:
    def __init__(self, work, name, *args, env=None):
        self.log = f"{work}/{name}.requests.jsonl"
        self.stderr_path = f"{work}/{name}.server.stderr"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", "0", "--template", TEMPLATE, "--request-log", self.log,
             "--seed", "5", *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env or os.environ)
        line = self.proc.stdout.readline()
        check(line.strip().isdigit(), f"server printed no port: {line!r}")
        self.port = int(line)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        self.stderr.close()
        with open(self.stderr_path) as f:
            OUTPUTS.append(out + f.read())
        check(self.proc.returncode == 0, f"server exited {self.proc.returncode}")
        return read_jsonl(self.log)


def score(work, name, port, rows, *sets, env=None, expect_rc=0, scheme="http"):
    inp, out = f"{work}/{name}.in.jsonl", f"{work}/{name}.out.jsonl"
    write_jsonl(inp, rows)
    cmd = [BIN, "score", "--in", inp, "--out", out,
           "--set", f'judge.template="{TEMPLATE}"', "--set", 'judge.backend="http"',
           "--set", f'judge.base_url="{scheme}://127.0.0.1:{port}"',
           "--set", "judge.backoff_base_s=0.05", "--set", "judge.backoff_max_s=0.2",
           *[a for s in sets for a in ("--set", s)]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ,
                       timeout=120 * TIME_SCALE)
    OUTPUTS.append(p.stdout + p.stderr)
    check(p.returncode == expect_rc,
          f"{name}: exit {p.returncode}, expected {expect_rc}\n{p.stdout}\n{p.stderr}")
    stats = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    return read_jsonl(out), stats, p.stderr


def by_body(log):
    lines = collections.defaultdict(list)
    for entry in log:
        lines[entry["body"]].append(entry)
    return lines


def main():
    work = tempfile.mkdtemp(prefix="dnpo_judge_")
    rows = answers(48)
    env = dict(os.environ, DNPO_TEST_JUDGE_KEY=KEY)
    key_sets = ['judge.api_key_env="DNPO_TEST_JUDGE_KEY"']

    # --- reference scores: the rule judge in-process ---
    write_jsonl(f"{work}/ref.in.jsonl", rows)
    p = subprocess.run([BIN, "score", "--in", f"{work}/ref.in.jsonl", "--out",
                        f"{work}/ref.out.jsonl"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"rule backend failed: {p.stderr}")
    reference = {r["id"]: r["score"] for r in read_jsonl(f"{work}/ref.out.jsonl")}
    check(len(set(reference.values())) > 2, "reference scores are not varied")

    # --- faults of every kind on the first two attempts ---
    server = Server(work, "faults", "--api-key-env", "DNPO_TEST_JUDGE_KEY", "--p-429", "0.06",
                    "--p-500", "0.06", "--p-drop", "0.06", "--p-slow", "0.06",
                    "--p-malformed", "0.06", "--faults-first-k", "2", "--retry-after-s", "1",
                    "--slow-ms", str(SLOW_MS), env=env)
    results, stats, _ = score(work, "faults", server.port, rows, *key_sets,
                              f"judge.timeout_s={JUDGE_TIMEOUT_S}", "judge.max_retries=4",
                              "judge.concurrency=8", env=env)
    log = server.stop()
    check([r["id"] for r in results] == [r["id"] for r in rows], "ids lost or reordered")
    for r in results:
        check(r["outcome"] == "scored", f"{r['id']} not scored: {r}")
        check(r["score"] == reference[r["id"]], f"{r['id']}: {r['score']} != {reference[r['id']]}")
    lines = by_body(log)
    check(set(lines) == {r["body"] for r in results}, "server saw bodies the client did not send")
    kinds = collections.Counter(e["outcome"] for e in log)
    for kind in ("429", "500", "drop", "slow", "malformed", "ok"):
        check(kinds[kind] > 0, f"no '{kind}' in the request log: {dict(kinds)}")
    check(kinds["ok"] == len(rows), f"{kinds['ok']} ok replies for {len(rows)} answers")
    for r in results:
        entries = lines[r["body"]]
        check([e["attempt"] for e in entries] == list(range(r["attempts"])),
              f"{r['id']}: client made {r['attempts']} attempts, server log {entries}")
        check(entries[-1]["outcome"] == "ok" and
              sum(e["outcome"] == "ok" for e in entries) == 1, f"{r['id']}: {entries}")
        for prev, nxt in zip(entries, entries[1:]):
            if prev["outcome"] == "429":
                check(nxt["t"] - prev["t"] >= 1.0,
                      f"{r['id']}: retried {nxt['t'] - prev['t']:.3f} s after a 429 with "
                      "Retry-After: 1")
        check(all(e["outcome"] != "slow" or e is not entries[-1] for e in entries),
              f"{r['id']}: a slow reply was not retried")
    check(stats["scored"] == len(rows) and stats["attempts"] == len(log) and
          stats["retries"] == len(log) - len(rows) and stats["pending"] == 0, f"stats {stats}")
    print(f"faults: {len(rows)} answers scored once; {len(log)} attempts; {dict(kinds)}")

    # --- an outage: every attempt 500 ---
    few = rows[:10]
    server = Server(work, "outage", "--p-500", "1")
    results, stats, _ = score(work, "outage", server.port, few, "judge.max_retries=2")
    log = server.stop()
    check(all(r["outcome"] == "spin_fallback" and r["score"] is None and r["attempts"] == 3
              for r in results), f"outage results {results}")
    check("HTTP 500: injected server error" in results[0]["error"], results[0]["error"])
    check(stats["spin_fallback"] == len(few) and stats["scored"] == 0, f"stats {stats}")
    check(len(log) == 3 * len(few) and all(e["outcome"] == "500" for e in log), "outage log")
    server = Server(work, "outage_fail", "--p-500", "1")
    results, stats, err = score(work, "outage_fail", server.port, few[:1],
                                "judge.max_retries=1", 'judge.failure_policy="fail"',
                                expect_rc=1)
    server.stop()
    check(results[0]["outcome"] == "failed" and stats["failed"] == 1, f"{results} {stats}")
    check("fatal:" in err and "HTTP 500" in err, f"no clear error: {err}")
    print(f"outage: fallback applied and counted ({stats})")

    # --- a wrong key: 401 is not retried ---
    server = Server(work, "auth", "--api-key-env", "DNPO_TEST_JUDGE_KEY", env=env)
    wrong = dict(os.environ, DNPO_TEST_JUDGE_KEY="sk-wrong")
    results, stats, _ = score(work, "auth", server.port, few[:2], *key_sets, env=wrong)
    log = server.stop()
    check(all(r["attempts"] == 1 and "HTTP 401" in r["error"] for r in results), f"{results}")
    check(len(log) == 2, f"401 retried: {log}")

    # --- an exhausted quota (429 insufficient_quota) and a wrong path (404): not retried ---
    server = Server(work, "quota", "--p-quota", "1")
    results, stats, _ = score(work, "quota", server.port, few[:3], "judge.max_retries=3")
    check(all(r["outcome"] == "spin_fallback" and r["attempts"] == 1 and
              "exceeded your current quota" in r["error"] for r in results), f"quota: {results}")
    check(stats["retries"] == 0 and stats["spin_fallback"] == 3, f"quota: stats {stats}")
    results, stats, _ = score(work, "not_found", f"{server.port}/wrong/prefix", few[:2],
                              "judge.max_retries=3")
    check(all(r["attempts"] == 1 and "HTTP 404" in r["error"] for r in results),
          f"404: {results}")
    log = server.stop()
    check(len(log) == 3 and all(e["outcome"] == "quota" for e in log), f"quota log: {log}")
    print("quota and 404: not retried, fallback applied")

    # --- the key is nowhere ---
    for text in OUTPUTS:
        check(KEY not in text, "the API key appears in a program's output")
    for name in os.listdir(work):
        with open(os.path.join(work, name), "rb") as f:
            check(KEY.encode() not in f.read(), f"the API key appears in {name}")
    print("judge_faults: all checks passed")


if __name__ == "__main__":
    main()
