#!/usr/bin/python3
"""benchmarks/paper_lengths.py's continuous-batching step count against cases worked by hand, and
its bounds on drawn lengths: never fewer steps than the answers' tokens over the rows, never more
than static batches take, and fewer drains (larger rounds) never cost steps."""
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
    # 2 rows over [3, 1, 1, 1]: the row of 1 takes the next answer after 1 step and the one after
    # that after 2; the 3 ends at step 3 with the last one: 3 steps (static batches: 3 + 1).
    check(lengths.continuous_steps([3, 1, 1, 1], 2) == 3, "[3,1,1,1] on 2 rows")
    # a long answer last: the batch drains behind it
    check(lengths.continuous_steps([1, 1, 1, 5], 2) == 6, "[1,1,1,5] on 2 rows")
    check(lengths.continuous_steps([4, 4], 4) == 4, "fewer answers than rows")
    out = {}
    for round_prompts in (128, 256, 1024):
        line = subprocess.run([sys.executable, SCRIPT, "batching", "--prompts", "1024", "--batch",
                               "32", "--round", str(round_prompts)],
                              check=True, capture_output=True, text=True).stdout
        row = json.loads(line)
        check(row["continuous_decode_steps_at_least"] <= row["continuous_decode_steps"]
              <= row["static_decode_steps"], f"bounds: {row}")
        out[round_prompts] = row["continuous_decode_steps"]
    check(out[128] >= out[256] >= out[1024], f"larger rounds took more steps: {out}")
    print(f"paper_lengths: steps in rounds of 128/256/1024 prompts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
