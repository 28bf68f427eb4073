#!/usr/bin/python3
"""benchmarks/paper_lengths.py's decode steps and prefills of continuous and static batches against
cases worked by hand, and bounds on drawn lengths: never fewer steps than the answers' tokens
(less each first token, picked in its prefill) over the rows, never more than static batches
take, and fewer drains (larger rounds) never cost steps."""
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "benchmarks", "paper_lengths.py")


def check(cond, what):
    if not cond:
        raise RuntimeError(what)


def load():
    spec = importlib.util.spec_from_file_location("paper_lengths", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    lengths = load()
    # 2 rows over [3, 1, 1, 1]: the prefill picks each first token, so the 3 decodes 2 steps and
    # each 1 ends in its prefill, its row taking the next prompt in another (3 prefills); static
    # batches: [3, 1] decodes 2 steps, [1, 1] none, one prefill each.
    check(lengths.continuous_batch([3, 1, 1, 1], 2) == (2, 3), "[3,1,1,1] on 2 rows")
    check(lengths.static_batches([3, 1, 1, 1], 2) == (2, 2), "static [3,1,1,1] on 2 rows")
    # a long answer last: the batch drains behind it
    check(lengths.continuous_batch([2, 2, 2, 5], 2) == (5, 2), "[2,2,2,5] on 2 rows")
    check(lengths.continuous_batch([4, 4], 4) == (3, 1), "fewer answers than rows")
    # refills of 2 rows: the row of 2 idles 2 steps for the row of 4, then both refill at once
    check(lengths.continuous_batch([2, 4, 3, 3], 2, refill_rows=2) == (5, 2), "refill 2")
    check(lengths.continuous_batch([2, 4, 3, 3], 2) == (5, 3), "refill at once")
    out = {}
    for round_prompts in (128, 256, 1024):
        line = subprocess.run([sys.executable, SCRIPT, "batching", "--prompts", "1024", "--batch",
                               "32", "--round", str(round_prompts)],
                              check=True, capture_output=True, text=True).stdout
        row = json.loads(line)
        rounds = row["in_rounds"]
        check(row["continuous_decode_steps_at_least"] - row["prompts"] / row["batch"]
              <= rounds["continuous_decode_steps"] <= rounds["static_decode_steps"],
              f"bounds: {row}")
        out[round_prompts] = rounds["continuous_decode_steps"]
    check(out[128] >= out[256] >= out[1024], f"larger rounds took more steps: {out}")
    print(f"paper_lengths: steps in rounds of 128/256/1024 prompts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
