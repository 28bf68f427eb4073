#!/usr/bin/python3
"""launch/regime_summary.py on a made-up run: reward accuracy and margins over an iteration's
quarters of steps, and the overlaps of its log-prob histograms (positive vs negative, generated
against the previous iteration's)."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SUMMARY = os.path.join(ROOT, "launch", "regime_summary.py")


def check(cond, what):
    if not cond:
        raise RuntimeError(what)


def write_run(root):
    run = os.path.join(root, "paper_s7_dnpo")
    os.makedirs(os.path.join(run, "plots"))
    with open(os.path.join(run, "selfplay.jsonl"), "w") as f:
        f.write('{"stage":"model_0","iteration":null,"eval":{"sampled_exact":0.5}}\n')
        for t, acc in enumerate((0.6, 0.7)):
            f.write(json.dumps({"iteration": t, "eval": {"sampled_exact": acc},
                                "logp_mean_after": {"generated": -1.5 - t}}) + "\n")
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write('{"kind":"sft","iteration":0,"loss":2.0,"step":1}\n')
        # iteration 1: 8 steps; the first quarter has margin 0.1 and reward accuracy 0, the last
        # quarter margin 0.5 and reward accuracy 1
        for step in range(8):
            first, last = step < 2, step >= 6
            f.write(json.dumps({"kind": "npo", "iteration": 1, "step": step + 1,
                                "margin": 0.1 if first else 0.5 if last else 0.3,
                                "reward_accuracy": 1.0 if last else 0.0}) + "\n")
    # Bin centres -3 and -1 fall into 2-nat bins -2 and -1.
    histograms = {0: ((2, 0), (0, 2), (2, 0)), 1: ((1, 1), (1, 1), (1, 1))}
    for t, (pos, neg, gen) in histograms.items():
        with open(os.path.join(run, "plots", f"logprobs_iter_{t}.csv"), "w") as f:
            f.write("logp,positive,negative,generated\n")
            for b, centre in enumerate((-3.0, -1.0)):
                f.write(f"{centre},{pos[b]},{neg[b]},{gen[b]}\n")
    return run


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, SUMMARY, "--grid", "2", write_run(tmp)], check=True,
                             capture_output=True, text=True).stdout
        print(out)
        rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines()
                if line.startswith("dnpo ")}
        # mode t acc rew_acc margin_first → margin_last gen_logp gen_prev pos_neg
        it0, it1 = rows[("dnpo", "0")], rows[("dnpo", "1")]
        check(it0[2] == "0.600" and it0[-1] == "0.000" and it0[-2] == "nan", it0)
        check(it1[2] == "0.700" and it1[3] == "1.000", it1)
        check(it1[4:7] == ["+0.10", "→", "+0.50"], it1)
        check(it1[7] == "-2.50" and it1[8] == "0.500" and it1[9] == "1.000", it1)
    print("regime_summary: OK")


if __name__ == "__main__":
    main()
