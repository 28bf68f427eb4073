#!/usr/bin/python3
"""Python peer of dnpo's generation loop (dnpo_generate_bench): greedy decoding with a KV cache as
HF transformers does it (keys and values concatenated per step), on the model and prompts
`dnpo_generate_bench --dump DIR` wrote. Both decode the same number of tokens (no EOS); the tokens
must agree with dnpo's (greedy: a different token means different work). One JSON line on stdout.
--dtype bf16 stores the projection matrices in bf16 and rounds each product's input to bf16, the
result back to fp32 (dnpo's sample.dtype = "bf16"); the rest stays fp32.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import safetensors_io  # noqa: E402


def lin(x, w):
    """A linear layer; a weight narrower than x gets x rounded to it, the result widened back."""
    if w.dtype == x.dtype:
        return F.linear(x, w)
    return F.linear(x.to(w.dtype), w).to(x.dtype)


class CachedLlama:
    """Llama forward over new tokens with a per-layer (keys, values) cache; fp32 activations,
    projection matrices in matrix_dtype; no autograd."""

    def __init__(self, cfg, weights, matrix_dtype=torch.float32):
        self.cfg, self.w = cfg, {k: v.float() for k, v in weights.items()}
        for name in self.w:
            if name.endswith("_proj.weight"):
                self.w[name] = self.w[name].to(matrix_dtype)
        tied = cfg.get("tie_word_embeddings")
        self.lm_head = (self.w["model.embed_tokens.weight" if tied else "lm_head.weight"]
                        .to(matrix_dtype))
        self.H, self.KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg["hidden_size"] // self.H
        self.inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.hd, 2).float() / self.hd))

    def rms(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"]) * weight

    def rotate(self, x, cos, sin):
        half = self.hd // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    def forward(self, ids, past, start):
        """ids (B, T) at positions start.. ; past: list of (k, v) or None. Returns the last
        position's logits (B, V) and the new cache."""
        B, T = ids.shape
        pos = torch.arange(start, start + T).float()
        freqs = pos[:, None] * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.w["model.embed_tokens.weight"][ids]
        cache = []
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = lin(h, self.w[p + "self_attn.q_proj.weight"]).view(B, T, self.H, self.hd)
            k = lin(h, self.w[p + "self_attn.k_proj.weight"]).view(B, T, self.KV, self.hd)
            v = lin(h, self.w[p + "self_attn.v_proj.weight"]).view(B, T, self.KV, self.hd)
            q = self.rotate(q.transpose(1, 2), cos, sin)
            k = self.rotate(k.transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            if past is not None:
                k = torch.cat([past[i][0], k], dim=2)
                v = torch.cat([past[i][1], v], dim=2)
            cache.append((k, v))
            if self.KV != self.H:
                k = k.repeat_interleave(self.H // self.KV, dim=1)
                v = v.repeat_interleave(self.H // self.KV, dim=1)
            scores = (q @ k.transpose(-1, -2)) / self.hd ** 0.5
            if T > 1:  # the prompt: causal
                causal = torch.ones(T, k.shape[2], dtype=torch.bool).tril(k.shape[2] - T)
                scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
            attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, -1)
            x = x + lin(attn, self.w[p + "self_attn.o_proj.weight"])
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            x = x + lin(F.silu(lin(h, self.w[p + "mlp.gate_proj.weight"])) *
                             lin(h, self.w[p + "mlp.up_proj.weight"]),
                             self.w[p + "mlp.down_proj.weight"])
        hidden = self.rms(x[:, -1], self.w["model.norm.weight"])
        return lin(hidden, self.lm_head), cache


def generate(model, prompts, new_tokens):
    logits, cache = model.forward(prompts, None, 0)
    out = []
    length = prompts.shape[1]
    for step in range(new_tokens):
        token = logits.argmax(-1)
        out.append(token)
        if step + 1 == new_tokens:
            break
        logits, cache = model.forward(token[:, None], cache, length)
        length += 1
    return torch.stack(out, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="the dtype of the projection matrices")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    with open(f"{args.dump}/policy/config.json") as f:
        cfg = json.load(f)
    model = CachedLlama(cfg, safetensors_io.load_dir(f"{args.dump}/policy"),
                        torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    data = safetensors_io.load_file(f"{args.dump}/generation.safetensors")
    prompts, expected = data["prompts"], data["generated"]
    new_tokens = expected.shape[1]
    with torch.no_grad():
        tokens = generate(model, prompts, new_tokens)  # warm-up, and the tokens to compare
        ms = []
        for _ in range(args.reps):
            start = time.perf_counter()
            generate(model, prompts, new_tokens)
            ms.append((time.perf_counter() - start) * 1e3)
    ms.sort()
    median = ms[len(ms) // 2]
    agree = float((tokens == expected).float().mean())
    # The first new token's logits: dnpo's against this loop's, and against fp32 weights (how far
    # the matrices' dtype moves them: the first difference must be well below the second).
    with torch.no_grad():
        mine, _ = model.forward(prompts, None, 0)
        fp32 = mine if args.dtype == "fp32" else CachedLlama(
            cfg, safetensors_io.load_dir(f"{args.dump}/policy")).forward(prompts, None, 0)[0]
    theirs = data["first_logits"]
    logits_diff = float((mine - theirs).abs().mean())
    dtype_diff = float((mine - fp32).abs().mean())
    print(json.dumps({"name": "peer.generate_greedy",
                      "config": {"batch": prompts.shape[0], "prompt_len": prompts.shape[1],
                                 "new_tokens": new_tokens, "threads": args.threads,
                                 "dtype": args.dtype},
                      "metric": "time_median", "value": median, "unit": "ms",
                      "tokens_per_s": prompts.shape[0] * new_tokens / (median / 1e3),
                      "tokens_equal_to_dnpo": agree,
                      "first_logits_mean_diff": logits_diff,
                      "first_logits_mean_diff_to_fp32": dtype_diff}))


if __name__ == "__main__":
    main()
