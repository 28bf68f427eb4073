#!/usr/bin/python3
"""Multiple-choice accuracy (`dnpo_dist eval --choices`) against an independent computation.

  A random Llama (HF layout, written here with tests/reference/safetensors_io.py) scores a JSONL
  of questions; this script recomputes every choice's log-likelihood with the float64 reference
  forward (tests/reference/llama_reference.py) on the byte tokenizer's ids, written out from its
  definition (bytes are ids 0..255, BOS 257), and the lm-eval-harness rules: continuation
  " " + choice, acc = argmax Σ log p, acc_norm = argmax Σ log p / len(choice).
  Checks: every log-likelihood within 2e-4, predictions, acc and acc_norm equal; answers given as
  an index, a letter and the choice's text all work; a bad answer names file:line.

Env: DNPO_BIN, DNPO_SOURCE_DIR.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch

SRC = os.environ["DNPO_SOURCE_DIR"]
BIN = os.environ["DNPO_BIN"]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
from llama_reference import forward, make_config, init_weights, sequence_logps  # noqa: E402
from safetensors_io import check, save_file  # noqa: E402

BOS = 257
MODEL = dict(vocab=260, hidden=32, inter=64, layers=2, heads=4, kv_heads=2, tie=True)


def write_model(path):
    torch.manual_seed(11)
    cfg = make_config(**MODEL)
    os.makedirs(path)
    save_file(init_weights(cfg), os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return cfg


def questions():
    rows = []
    for i in range(14):
        a, b = 3 + 7 * i, 11 + 5 * i
        choices = [str(a + b), str(a + b + 1), str(a * b), "none of these " * (i % 3)]
        choices[3] = choices[3].strip() or "zero"
        label = i % 4
        answer = [label, "ABCD"[label], choices[label]][i % 3]  # index, letter, text
        rows.append({"id": f"q{i}", "question": f"What is {a}+{b}?", "choices": choices,
                     "answer" if i % 2 else "label": answer})
    return rows


def reference(cfg, w, rows):
    preds, preds_norm, logliks = [], [], []
    for r in rows:
        context = [BOS] + list(r["question"].encode())
        ll = []
        for choice in r["choices"]:
            cont = list((" " + choice).encode())
            ids = torch.tensor([context + cont])
            mask = torch.zeros_like(ids)
            mask[0, len(context):] = 1
            _, logits = forward(w, cfg, ids, torch.ones_like(ids))
            ll.append(sequence_logps(logits, ids, mask).item())
        logliks.append(ll)
        preds.append(max(range(len(ll)), key=lambda c: ll[c]))
        normed = [ll[c] / len(r["choices"][c]) for c in range(len(ll))]
        preds_norm.append(max(range(len(ll)), key=lambda c: normed[c]))
    return logliks, preds, preds_norm


def main():
    work = tempfile.mkdtemp()
    model_dir = os.path.join(work, "model")
    cfg = write_model(model_dir)
    rows = questions()
    with open(os.path.join(work, "mc.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    labels = []
    for r in rows:
        a = r.get("label", r.get("answer"))
        labels.append(a if isinstance(a, int) else
                      r["choices"].index(a) if a in r["choices"] else "ABCD".index(a))
    sets = [f"model.{k}={v}" for k, v in
            [("vocab_size", 260), ("hidden_size", 32), ("intermediate_size", 64),
             ("num_hidden_layers", 2), ("num_attention_heads", 4), ("num_key_value_heads", 2),
             ("max_position_embeddings", 64)]]
    cmd = [f"{BIN}/dnpo_dist", "eval", "--model", model_dir, "--choices", f"{work}/mc.jsonl",
           "--choices-out", f"{work}/out.jsonl", "--set", f'run.out_dir="{work}/runs"',
           *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    check(done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    got = [json.loads(line) for line in open(f"{work}/out.jsonl")]
    summary = json.load(open(f"{work}/runs/demo/eval_choices.json"))

    w = {k: v.to(torch.float64) for k, v in init_weights_again().items()}
    logliks, preds, preds_norm = reference(cfg, w, rows)
    worst = 0.0
    for g, ll, p, pn, label, r in zip(got, logliks, preds, preds_norm, labels, rows):
        check(g["id"] == r["id"] and g["label"] == label, (g, label))
        for a, b in zip(g["loglik"], ll):
            worst = max(worst, abs(a - b))
        check(g["predicted"] == p and g["predicted_norm"] == pn, (g, p, pn, ll))
    check(worst < 2e-4, f"log-likelihoods differ by {worst}")
    acc = sum(p == l for p, l in zip(preds, labels)) / len(rows)
    acc_norm = sum(p == l for p, l in zip(preds_norm, labels)) / len(rows)
    check(abs(summary["acc"] - acc) < 1e-12 and abs(summary["acc_norm"] - acc_norm) < 1e-12,
          (summary, acc, acc_norm))
    print(f"{len(rows)} questions: acc {acc:.3f}, acc_norm {acc_norm:.3f} as the reference; "
          f"worst log-likelihood difference {worst:.2e}")

    with open(f"{work}/bad.jsonl", "w") as f:
        f.write(json.dumps(rows[0]) + "\n")
        f.write(json.dumps({"id": "x", "question": "?", "choices": ["a", "b"], "label": 5}) + "\n")
    bad = cmd[:5] + [f"{work}/bad.jsonl"] + cmd[6:]
    done = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    check(done.returncode != 0 and "bad.jsonl:2:" in done.stderr, done.stderr)
    print("a bad answer is reported as bad.jsonl:2")


def init_weights_again():
    torch.manual_seed(11)
    return init_weights(make_config(**MODEL))


if __name__ == "__main__":
    main()
