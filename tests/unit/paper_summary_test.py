#!/usr/bin/python3
"""launch/paper_summary.py on made-up runs: the chain table's per-mode means and differences to
SPIN, and the ablation table's arms against SPIN's next model, with per-seed signs."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SUMMARY = os.path.join(ROOT, "launch", "paper_summary.py")


def check(cond, what):
    if not cond:
        raise RuntimeError(what)


def write_run(root, name, accuracies):
    """A run whose model_k has sampled_exact accuracies[k]."""
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "selfplay.jsonl"), "w") as f:
        for k, acc in enumerate(accuracies):
            iteration = "null" if k == 0 else str(k - 1)
            f.write(f'{{"stage":"x","iteration":{iteration},"eval":{{"sampled_exact":{acc}}}}}\n')
    return os.path.join(root, name)


def summary(protocol, runs):
    out = subprocess.run([sys.executable, SUMMARY, "--protocol", protocol, *runs],
                         check=True, capture_output=True, text=True).stdout
    print(out)
    return out.splitlines()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        chain = [write_run(tmp, "paper_s1_spin", [0.5, 0.6, 0.6]),
                 write_run(tmp, "paper_s2_spin", [0.5, 0.6, 0.7]),
                 write_run(tmp, "paper_s1_dnpo", [0.5, 0.6, 0.8]),
                 write_run(tmp, "paper_s2_dnpo", [0.5, 0.6, 0.6])]
        lines = summary("chain", chain)
        row = [line for line in lines if line.startswith("model_2 dnpo")]
        check(len(row) == 1, f"no model_2 dnpo row in {lines}")
        # dnpo 0.8, 0.6 against spin 0.6, 0.7: +0.2 and -0.1, mean +0.05, one seed agrees
        check("0.700 ± 0.141 (2)" in row[0], row[0])
        check("+0.050 [+0.200 -0.100] 1/2 agree" in row[0], row[0])

        ablation = [write_run(tmp, "paper_s1_spin_chain", [0.5, 0.6, 0.62, 0.64]),
                    write_run(tmp, "paper_s2_spin_chain", [0.5, 0.6, 0.60, 0.66]),
                    write_run(tmp, "paper_s1_npo_t2", [0.5, 0.6, 0.62, 0.70]),
                    write_run(tmp, "paper_s2_npo_t2", [0.5, 0.6, 0.60, 0.70])]
        lines = summary("ablation", ablation)
        row = [line for line in lines if line.startswith("t=2 npo")]
        check(len(row) == 1, f"no t=2 npo row in {lines}")
        # model_3 of each arm against SPIN's model_3: +0.06 and +0.04, both agree
        check("+0.050 [+0.060 +0.040] 2/2 agree" in row[0], row[0])
        check(any(line.startswith("t=2 spin") and "0.650 ± 0.014 (2)" in line for line in lines),
              lines)
    print("paper_summary: OK")


if __name__ == "__main__":
    main()
