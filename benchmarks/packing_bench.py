#!/usr/bin/python3
"""Padded against packed preference micro-batches (train.pack_pairs) on pairs of the paper's
lengths: useful tokens per second and the share of padding, interleaved, on one machine.

Each run is `dnpo_dist train` on the same pairs (benchmarks/paper_lengths.py jsonl: the byte
tokenizer makes a token of every byte, so the lengths are the assumed token counts), one process,
the same model, seed and steps; only train.pack_pairs differs. A step's figures come from
metrics.jsonl: tokens_per_s counts real tokens only (useful tokens), padding is the share of
processed slots that hold none. The first step of a run is a warm-up and is left out.

  packing_bench.py --bin build/bin [--loss spin,npo] [--micro 1,4,8] [--batch 8] [--steps 4]
                   [--reps 2] [--threads 2] [--hidden 256] [--layers 4] [--pack-length N]
prints one JSON line per (loss, micro-batch): medians of both layouts and their ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_once(args, work, pairs, loss, micro, packed, rep):
    name = f"{loss}_m{micro}_{'packed' if packed else 'padded'}_{rep}"
    sets = {
        "run.name": f'"{name}"', "run.out_dir": f'"{work}"', "run.threads": args.threads,
        "run.log_every": 1000, "run.seed": 11,
        "model.vocab_size": 260, "model.hidden_size": args.hidden,
        "model.intermediate_size": args.hidden * 8 // 3, "model.num_hidden_layers": args.layers,
        "model.num_attention_heads": args.hidden // 64, "model.num_key_value_heads": args.hidden // 64,
        "model.max_position_embeddings": 1024,
        "data.max_length": 1024, "data.max_prompt_length": 512,
        "train.loss": f'"{loss}"', "train.batch_size": args.batch, "train.micro_batch_size": micro,
        "train.max_steps": args.steps, "train.pack_pairs": "true" if packed else "false",
        "train.pack_length": args.pack_length, "checkpoint.every_steps": 0,
    }
    cmd = [os.path.join(args.bin, "dnpo_dist"), "train", "--pairs", pairs, "--out",
           os.path.join(work, name, "model")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(work, name, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    steps = [s for s in steps if "tokens_per_s" in s][1:]  # the first step warms up
    return {"tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps),
            "step_ms": statistics.median(s["step_ms"] for s in steps),
            "padding": statistics.mean(s["padding"] for s in steps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--loss", default="spin,npo")
    parser.add_argument("--micro", default="1,4,8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pack-length", type=int, default=0, help="train.pack_length")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnpo_packing_") as work:
        pairs = os.path.join(work, "pairs.jsonl")
        count = args.batch * args.steps
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "paper_lengths.py"), "jsonl",
                        "--pairs", str(count), "--out", pairs, "--seed", str(args.seed)], check=True)
        for loss in args.loss.split(","):
            for micro in (int(m) for m in args.micro.split(",")):
                runs = {False: [], True: []}
                for rep in range(args.reps):
                    for packed in (False, True):  # interleaved
                        runs[packed].append(run_once(args, work, pairs, loss, micro, packed, rep))
                med = {p: {k: statistics.median(r[k] for r in runs[p]) for k in runs[p][0]}
                       for p in runs}
                print(json.dumps({
                    "name": f"packing.{loss}", "micro_batch": micro, "batch": args.batch,
                    "padded_tokens_per_s": round(med[False]["tokens_per_s"]),
                    "packed_tokens_per_s": round(med[True]["tokens_per_s"]),
                    "speedup": round(med[True]["tokens_per_s"] / med[False]["tokens_per_s"], 3),
                    "padded_padding": round(med[False]["padding"], 4),
                    "packed_padding": round(med[True]["padding"], 4),
                    "padded_step_ms": round(med[False]["step_ms"]),
                    "packed_step_ms": round(med[True]["step_ms"]),
                    "runs": {"padded": [round(r["tokens_per_s"]) for r in runs[False]],
                             "packed": [round(r["tokens_per_s"]) for r in runs[True]]},
                    "pack_length": args.pack_length,
                    "model": {"hidden": args.hidden, "layers": args.layers, "vocab": 260},
                    "threads": args.threads}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
