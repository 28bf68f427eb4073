#!/usr/bin/python3
"""The paper's tables from launch/paper-table's runs: one metric of each model per run
(selfplay.jsonl: model_0 = SFT, model_k = after iteration k-1), as mean ± std over the seeds,
with each arm's per-seed difference to SPIN and how many seeds agree in its sign.

  chain     runs paper_s<seed>_<mode>: every mode's own chain of iterations (the paper's
            Table 1: SPIN's chain against DNPO's), model by model.
  ablation  runs paper_s<seed>_spin_chain (SPIN's chain from SFT) and paper_s<seed>_<arm>_t<t> (one iteration t
            of the arm from SPIN's model_t, the paper's Appendix G/H): per iteration, each arm's
            model_{t+1} against SPIN's own.

Usage: paper_summary.py --protocol chain|ablation [--metric sampled_exact] RUN_DIR...
"""
import argparse
import json
import os
import re
import statistics
import sys

CHAIN = re.compile(r"^paper_s(\d+)_([a-z_]+?)$")
ARM = re.compile(r"^paper_s(\d+)_([a-z_]+)_t(\d+)$")


def models(run_dir, metric):
    """{model index: metric} from the run's selfplay.jsonl."""
    out = {}
    with open(os.path.join(run_dir, "selfplay.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            value = r.get("eval", {}).get(metric)
            if value is None:
                continue
            out[0 if r.get("iteration") is None else r["iteration"] + 1] = value
    return out


def cell(values):
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({len(values)})"


def versus(arm, spin):
    """Mean difference to SPIN over the seeds both have, the per-seed differences, and how many
    seeds agree with the mean's sign."""
    seeds = sorted(set(arm) & set(spin))
    if not seeds:
        return "-"
    diffs = [arm[s] - spin[s] for s in seeds]
    mean = statistics.mean(diffs)
    agree = sum(1 for d in diffs if (d > 0) == (mean > 0) and d != 0)
    per_seed = " ".join(f"{d:+.3f}" for d in diffs)
    return f"{mean:+.3f} [{per_seed}] {agree}/{len(seeds)} agree"


def chain_table(runs, metric):
    by_mode = {}  # mode -> seed -> {model: value}
    for run in runs:
        m = CHAIN.match(os.path.basename(os.path.normpath(run)))
        if m:
            by_mode.setdefault(m.group(2), {})[int(m.group(1))] = models(run, metric)
    spin = by_mode.get("spin", {})
    last = max((k for seeds in by_mode.values() for ms in seeds.values() for k in ms), default=-1)
    lines = [f"chain protocol ({metric}): each mode's own chain; model_k after iteration k-1"]
    for k in range(last + 1):
        for mode in sorted(by_mode):
            seeds = by_mode[mode]
            values = {s: ms[k] for s, ms in seeds.items() if k in ms}
            vs = "" if mode == "spin" else "  vs spin " + versus(
                values, {s: ms[k] for s, ms in spin.items() if k in ms})
            lines.append(f"model_{k} {mode:<12} {cell(list(values.values()))}{vs}")
    return lines


def ablation_table(runs, metric):
    spin, arms = {}, {}  # seed -> {model: value}; (arm, t) -> seed -> value of model_{t+1}
    for run in runs:
        name = os.path.basename(os.path.normpath(run))
        m = ARM.match(name)
        if m:
            seed, arm, t = int(m.group(1)), m.group(2), int(m.group(3))
            value = models(run, metric).get(t + 1)
            if value is not None:
                arms.setdefault((arm, t), {})[seed] = value
            continue
        m = CHAIN.match(name)
        if m and m.group(2) in ("spin", "spin_chain"):
            spin[int(m.group(1))] = models(run, metric)
    lines = [f"ablation protocol ({metric}): iteration t of each arm from SPIN's model_t, "
             "against SPIN's model_{t+1}"]
    for t in sorted({t for _, t in arms}):
        base = {s: ms[t + 1] for s, ms in spin.items() if t + 1 in ms}
        lines.append(f"t={t} spin         {cell(list(base.values()))}")
        for arm in sorted(a for a, tt in arms if tt == t):
            values = arms[(arm, t)]
            lines.append(f"t={t} {arm:<12} {cell(list(values.values()))}  vs spin "
                         f"{versus(values, base)}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=("chain", "ablation"), required=True)
    ap.add_argument("--metric", default="sampled_exact")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    table = chain_table if args.protocol == "chain" else ablation_table
    print("\n".join(table(args.runs, args.metric)))


if __name__ == "__main__":
    sys.exit(main())
