#!/usr/bin/python3
"""HF export of a checkpoint, checked by independent code.

  A short SFT run writes its final checkpoint; dnpo_ckpt exports its policy as an HF directory,
  sharded fp32 (with model.safetensors.index.json) and single-file bf16. This script reads the
  exports with its own safetensors reader (tests/reference/safetensors_io.py, written from the
  format's spec) and checks:
  - fp32 export == the checkpoint's policy tensors (h5py) == the stage's own HF output, exactly;
  - bf16 export == those tensors rounded to bf16 (round to nearest even), exactly;
  - an HF-convention Llama forward written from the equations (tests/reference/llama_reference.py,
    float64) on each export reproduces dnpo's logits for the same ids (dnpo_ckpt logits loads
    the export the way dnpo_dist --init does).

Env: DNPO_BIN, DNPO_SOURCE_DIR.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

SRC = os.environ["DNPO_SOURCE_DIR"]
BIN = os.environ["DNPO_BIN"]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
from llama_reference import forward  # noqa: E402
from safetensors_io import check, load_dir  # noqa: E402

IDS = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 2, 50]


def sh(*cmd):
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    check(done.returncode == 0, f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout[-3000:]}")
    return done.stdout


def bf16_round(t):
    """float32 -> nearest bf16 (ties to even), as float32; written from the bit layout."""
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.to(torch.int32).view(torch.float32)


def reference_logits(hf_dir):
    w = {k: v.to(torch.float64) for k, v in load_dir(hf_dir).items()}
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    ids = torch.tensor([IDS])
    _, logits = forward(w, cfg, ids, torch.ones_like(ids))
    return logits[0]


def dnpo_logits(hf_dir):
    out = sh(f"{BIN}/dnpo_ckpt", "logits", "--model", hf_dir, "--ids", " ".join(map(str, IDS)))
    return torch.tensor(json.loads(out)["logits"], dtype=torch.float64)


def main():
    work = tempfile.mkdtemp()
    try:
        os.chdir(work)
        common = ["--config", f"{SRC}/configs/demo.toml", "--set", 'run.out_dir="runs"',
                  "--set", 'data.train_file="data/train.jsonl"',
                  "--set", 'data.eval_file="data/eval.jsonl"', "--set", "demo.train_size=256"]
        sh(f"{BIN}/dnpo_dist", "demo-data", *common)
        sh(f"{BIN}/dnpo_dist", "sft", *common, "--set", "train.max_steps=4",
           "--set", "train.batch_size=8", "--set", "train.micro_batch_size=8")
        ckpt_dir = "runs/demo/checkpoints"
        ckpt = f"{ckpt_dir}/{open(f'{ckpt_dir}/latest').read().strip()}.h5"
        sh(f"{BIN}/dnpo_ckpt", "export", ckpt, "--out", "hf32", "--max-shard-size", "1MB")
        sh(f"{BIN}/dnpo_ckpt", "export", ckpt, "--out", "hf16", "--dtype", "bf16")
        shards = [f for f in os.listdir("hf32") if f.endswith(".safetensors")]
        check(len(shards) >= 2 and os.path.exists("hf32/model.safetensors.index.json"), shards)
        check(json.load(open("hf16/config.json"))["torch_dtype"] == "bfloat16")

        with h5py.File(ckpt, "r") as f:
            stored = {k[len("policy."):]: torch.from_numpy(np.array(v))
                      for k, v in f["tensors"].items() if k.startswith("policy.")}
        fp32, bf16, stage = load_dir("hf32"), load_dir("hf16"), load_dir("runs/demo/sft")
        check(fp32.keys() == stored.keys() == bf16.keys() == stage.keys(), "tensor names differ")
        for name, t in stored.items():
            check(torch.equal(fp32[name], t), f"fp32 export: {name} differs from the checkpoint")
            check(torch.equal(stage[name], t), f"the stage's HF output: {name} differs")
            check(torch.equal(bf16[name], bf16_round(t)), f"bf16 export: {name} is not rounded")
        print(f"exports: {len(stored)} tensors; fp32 in {len(shards)} shards equals the checkpoint "
              "and the stage output exactly; bf16 equals them rounded to nearest even")

        for hf_dir in ("hf32", "hf16"):
            ref, ours = reference_logits(hf_dir), dnpo_logits(hf_dir)
            err = (ref - ours).abs().max().item()
            scale = ref.abs().max().item()
            check(err <= 1e-5 * max(1.0, scale), f"{hf_dir}: logits differ by {err:.2e}")
            print(f"{hf_dir}: dnpo's logits match the independent forward to {err:.1e} "
                  f"(largest logit {scale:.2f})")
        print("hf_export_golden: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
