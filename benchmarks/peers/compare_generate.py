#!/usr/bin/python3
"""dnpo's greedy KV-cache generation (dnpo_generate_bench) side by side with the Python loop
(generate_peer.py) on the same model and prompts: interleaved runs, `--reps` times, the median of
the per-run medians, the speed-up (peer time / dnpo time), and the share of tokens both produced
alike (greedy decoding: equal tokens mean equal work), and how far the first new token's logits
differ. One JSON line on stdout; exit 1 when fewer than 99% of the tokens agree or the logits
differ more than the dtype allows.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shape", default="", help="dnpo_generate_bench shape flags")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="the projection matrices' dtype on both sides")
    args = ap.parse_args()
    dump = tempfile.mkdtemp(prefix="dnpo_gen_peer_")
    bench = [f"{args.bin}/dnpo_generate_bench", *shlex.split(args.shape), "--threads",
             str(args.threads), "--dtype", args.dtype]
    subprocess.run([*bench, "--dump", dump, "--reps", "1"], check=True, capture_output=True)
    dn, pe = [], []
    for _ in range(args.reps):
        dn.append(run_json(bench))
        pe.append(run_json(["/usr/bin/python3", f"{HERE}/generate_peer.py", "--dump", dump,
                            "--threads", str(args.threads), "--dtype", args.dtype]))
    ms = statistics.median(r["value"] for r in dn)
    peer_ms = statistics.median(r["value"] for r in pe)
    agree = pe[0]["tokens_equal_to_dnpo"]
    cfg = dn[0]["config"]
    print(json.dumps({"name": "generate.greedy", "config": cfg, "metric": "time_median",
                      "value": ms, "unit": "ms", "peer": "Python KV-cache loop",
                      "peer_value": peer_ms, "ratio": peer_ms / ms,
                      "tokens_per_s": cfg["batch"] * cfg["new_tokens"] / (ms / 1e3),
                      "runs": [round(r["value"], 1) for r in dn],
                      "peer_runs": [round(r["value"], 1) for r in pe],
                      "tokens_equal": agree,
                      "first_logits_mean_diff": pe[0]["first_logits_mean_diff"],
                      "first_logits_mean_diff_to_fp32": pe[0]["first_logits_mean_diff_to_fp32"]}))
    if agree < 0.99:
        sys.exit(f"compare_generate: only {agree:.1%} of the tokens agree: not the same work")
    # The values, not only the argmax: in fp32 equal up to float rounding; in bf16 dnpo must be
    # nearer the bf16 loop than fp32 weights are (else it did not decode in bf16).
    diff, dtype_diff = pe[0]["first_logits_mean_diff"], pe[0]["first_logits_mean_diff_to_fp32"]
    if args.dtype == "fp32" and diff > 1e-5:
        sys.exit(f"compare_generate: first logits differ by {diff:.3g} on average in fp32")
    if args.dtype == "bf16" and not diff <= 0.5 * dtype_diff:
        sys.exit(f"compare_generate: first logits differ from the bf16 loop's by {diff:.3g} on "
                 f"average, fp32 weights move them by {dtype_diff:.3g}: not decoded in bf16")


if __name__ == "__main__":
    main()
