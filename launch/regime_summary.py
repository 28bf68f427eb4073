#!/usr/bin/python3
"""Whether a run's self-play iterations reach the regime the paper's noise is for: per mode and
iteration, mean over the seeds of launch/paper-table's chain runs (paper_s<seed>_<mode>):

  acc       held-out sampled exact accuracy of the model after the iteration
  rew_acc   reward accuracy over the iteration's last quarter of steps (1 = saturated)
  margin    β-scaled preference margin over its first and last quarter of steps (growing margins:
            the loss saturating); NPO's margin is the noisy one its loss sees
  gen_logp  mean log π(y'|x) of the iteration's generated answers under the model after it
  gen_prev  overlap of that histogram with the previous iteration's (paper Fig. 2: near 1 when
            the generated data no longer changes — stagnation)
  pos_neg   overlap of the positive and negative answers' log-prob histograms after training
            (paper Fig. 10)

Overlap = Σ_bins min(p, q) of the two normalised histograms (1 = identical, 0 = disjoint), on a
common grid of --grid nats (0.5: the loop's own lattice; runs from before 2026-12-07 evening
wrote 40 bins over each file's range, re-binned by their centres: use --grid 2 for those).

Usage: regime_summary.py [--grid NATS] RUN_DIR...
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict

CHAIN = re.compile(r"^paper_s(\d+)_([a-z_]+?)$")
GRID = 0.5  # nats per common bin (--grid), the loop's own lattice


def histogram(run_dir, t, grid):
    """{kind: {grid bin: count}} of the run's logprobs_iter_<t>.csv, or None."""
    path = os.path.join(run_dir, "plots", f"logprobs_iter_{t}.csv")
    if not os.path.exists(path):
        return None
    out = {"positive": defaultdict(float), "negative": defaultdict(float),
           "generated": defaultdict(float)}
    with open(path) as f:
        for row in csv.DictReader(f):
            b = math.floor(float(row["logp"]) / grid)
            for kind, counts in out.items():
                counts[b] += float(row[kind])
    return out


def overlap(p, q):
    sp, sq = sum(p.values()), sum(q.values())
    if sp == 0 or sq == 0:
        return math.nan
    return sum(min(p[b] / sp, q.get(b, 0.0) / sq) for b in p)


def steps_by_iteration(run_dir):
    """{iteration: [metrics of each preference step]} from metrics.jsonl."""
    out = defaultdict(list)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") in ("spin", "npo") and "reward_accuracy" in r:
                out[r["iteration"]].append(r)
    return out


def quarter_mean(steps, key, last):
    n = max(1, len(steps) // 4)
    part = steps[-n:] if last else steps[:n]
    return statistics.mean(s[key] for s in part)


def iterations(run_dir, grid):
    """{t: {field: value}} for every self-play iteration the run trained."""
    evals = {}
    with open(os.path.join(run_dir, "selfplay.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("iteration") is not None:
                evals[r["iteration"]] = r
    steps = steps_by_iteration(run_dir)
    out = {}
    for t, r in evals.items():
        row = {"acc": r.get("eval", {}).get("sampled_exact", math.nan)}
        if steps.get(t):
            row["rew_acc"] = quarter_mean(steps[t], "reward_accuracy", True)
            row["margin_first"] = quarter_mean(steps[t], "margin", False)
            row["margin_last"] = quarter_mean(steps[t], "margin", True)
        row["gen_logp"] = r.get("logp_mean_after", {}).get("generated", math.nan)
        here, before = histogram(run_dir, t, grid), histogram(run_dir, t - 1, grid)
        if here:
            row["pos_neg"] = overlap(here["positive"], here["negative"])
            if before:
                row["gen_prev"] = overlap(here["generated"], before["generated"])
        out[t] = row
    return out


def mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else math.nan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=float, default=GRID, help="nats per common histogram bin")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    table = defaultdict(lambda: defaultdict(list))  # (mode, t) -> field -> per-seed values
    seeds = set()
    for run in args.runs:
        m = CHAIN.match(os.path.basename(os.path.normpath(run)))
        if not m:
            continue
        seeds.add(int(m.group(1)))
        for t, row in iterations(run, args.grid).items():
            for field, value in row.items():
                table[(m.group(2), t)][field].append(value)
    print(f"seeds {sorted(seeds)}; means over them")
    print(f"{'mode':<12} {'t':>2} {'acc':>6} {'rew_acc':>7} {'margin first→last':>18} "
          f"{'gen_logp':>8} {'gen_prev':>8} {'pos_neg':>7}")
    for (mode, t) in sorted(table, key=lambda k: (k[0] != "spin", k[0], k[1])):
        f = table[(mode, t)]
        margin = f"{mean(f['margin_first']):+.2f} → {mean(f['margin_last']):+.2f}"
        print(f"{mode:<12} {t:>2} {mean(f['acc']):>6.3f} {mean(f['rew_acc']):>7.3f} "
              f"{margin:>18} {mean(f['gen_logp']):>8.2f} {mean(f['gen_prev']):>8.3f} "
              f"{mean(f['pos_neg']):>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
