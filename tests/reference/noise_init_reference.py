"""Golden data for the noise head's initial scale: the mean of s = exp(f(h)) over random
unit-variance hidden states h when f is initialised as PyTorch's nn.Linear does (the authors'
head; docs/algorithm.md, "The noise head").

Usage: /usr/bin/python3 noise_init_reference.py OUTDIR  -> OUTDIR/noise_init.json
{"vocab": V, "rows": N, "seeds": S, "cases": [{"head", "hidden", "mean_s"}, ...]}: mean_s is the
mean over S initialisations (torch.manual_seed(seed)), N rows of h ~ N(0, 1) and V outputs.
"""

import json
import os
import sys

import torch

VOCAB = 256
ROWS = 64
SEEDS = 4


def make_head(kind, hidden):
    if kind == "ln_gelu_linear":  # LayerNorm → GELU → Linear without bias (the authors' runs)
        return torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.GELU(),
                                   torch.nn.Linear(hidden, VOCAB, bias=False))
    return torch.nn.Linear(hidden, VOCAB)  # W h + b (the paper's wording)


def mean_s(kind, hidden):
    total = 0.0
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        head = make_head(kind, hidden).double()
        h = torch.randn(ROWS, hidden, dtype=torch.float64)
        with torch.no_grad():
            total += torch.exp(head(h)).mean().item()
    return total / SEEDS


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    cases = [{"head": kind, "hidden": hidden, "mean_s": mean_s(kind, hidden)}
             for kind in ("ln_gelu_linear", "linear") for hidden in (128, 4096)]
    for case in cases:  # the bound ±1/√d keeps Var f below 1/3 + 1/(3d) at any width
        if not 1.0 < case["mean_s"] < 1.3:
            raise RuntimeError(f"implausible initial mean s: {case}")
    with open(os.path.join(out, "noise_init.json"), "w") as f:
        json.dump({"vocab": VOCAB, "rows": ROWS, "seeds": SEEDS, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
