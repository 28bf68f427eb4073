#!/usr/bin/python3
"""Decode-shaped linear layers (8 rows, or any) in fp32 against bf16 on this machine's LibTorch (Debian's
python3-torch: the same LibTorch 1.13 and oneDNN dnpo links), one thread. Each weight is cycled
through 16 copies so that it comes from DRAM, as in a decode step. Is bf16 generation a lever
for the 17M generation goal? Usage: /usr/bin/python3 benchmarks/probes/bf16_linear.py [rounds]
"""
import sys
import time

import torch

SHAPES = [(1536, 512, "q, k, v fused"), (512, 512, "o"), (2816, 512, "gate, up fused"),
          (512, 1408, "down"), (8000, 512, "lm_head")]
COPIES, REPS = 16, 20


def time_us(x, weights):
    torch.nn.functional.linear(x, weights[0])  # warm-up
    start = time.perf_counter()
    for r in range(REPS):
        for w in weights:
            torch.nn.functional.linear(x, w)
    return (time.perf_counter() - start) / (REPS * len(weights)) * 1e6


def main():
    torch.set_num_threads(1)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    print("| weight (N × K) | fp32 (µs) | bf16 (µs) | fp32 / bf16 |")
    print("|---|---|---|---|")
    for n, k, name in SHAPES:
        x = torch.randn(rows, k)
        w32 = [torch.randn(n, k) for _ in range(COPIES)]
        w16 = [w.bfloat16() for w in w32]
        f32, f16 = [], []
        for _ in range(rounds):  # interleaved
            f32.append(time_us(x, w32))
            f16.append(time_us(x.bfloat16(), w16))
        a, b = sorted(f32)[rounds // 2], sorted(f16)[rounds // 2]
        print(f"| {n} × {k} ({name}) | {a:.0f} | {b:.0f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
