#!/usr/bin/python3
"""Two builds of dnpo_step_bench side by side: SFT, SPIN and NPO steps on the same shapes, run
A, B, A, B, ... so the machine's drift falls on both alike. Prints one JSON line per (loss,
shape): each build's median of its runs' median step times, the ratio A/B, and whether the
first two steps' losses agree bit for bit (the same work).

Usage: benchmarks/compare_builds.py --a NEW/dnpo_step_bench --b OLD/dnpo_step_bench [--reps 4]
"""
import argparse
import json
import statistics
import subprocess
import sys

SHAPES = {
    "demo": "--vocab 260 --hidden 128 --layers 4 --batch 32 --prompt-len 16 --response-len 8 "
            "--steps 10",
    "17M": "--vocab 8000 --hidden 512 --layers 4 --batch 8 --prompt-len 48 --response-len 48 "
           "--steps 4",
}


def run(binary, loss, shape, threads):
    out = subprocess.run([binary, "--loss", loss, "--threads", str(threads)] + shape.split(),
                         capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            values[row["metric"]] = row["value"]
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="the build under test")
    parser.add_argument("--b", required=True, help="the baseline build")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--losses", default="sft,spin,npo")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    for shape_name in args.shapes.split(","):
        for loss in args.losses.split(","):
            times = {"a": [], "b": []}
            losses = {"a": None, "b": None}
            for _ in range(args.reps):
                for side in ("a", "b"):
                    values = run(getattr(args, side), loss, SHAPES[shape_name], args.threads)
                    times[side].append(values["step_time_median"])
                    losses[side] = (values["first_step_loss"], values["second_step_loss"])
            a, b = statistics.median(times["a"]), statistics.median(times["b"])
            print(json.dumps({"shape": shape_name, "loss": loss, "a_ms": round(a, 2),
                              "b_ms": round(b, 2), "a_over_b": round(a / b, 3),
                              "a_runs": [round(t, 1) for t in times["a"]],
                              "b_runs": [round(t, 1) for t in times["b"]],
                              "same_losses": losses["a"] == losses["b"]}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
