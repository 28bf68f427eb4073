"""Golden data for the Llama decoder: an HF-convention Llama forward written from the equations.

Usage: /usr/bin/python3 llama_reference.py OUTDIR  -> OUTDIR/{gqa_tied,mha_untied}/...
Computes in float64 from float32 weights; stores expected values as F32, inputs as I64.
Does not use the transformers package. Logits/hidden at pad positions (attention_mask 0) are
implementation-defined; compare them only where attention_mask == 1.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import check, load_file, save_file  # noqa: E402

MASK_VALUE = -1e9  # large negative (not -inf) for masked attention scores


# --- config and weights -------------------------------------------------------------------------

def make_config(vocab, hidden, inter, layers, heads, kv_heads, tie):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 64,
        "tie_word_embeddings": tie,
        "torch_dtype": "float32",
        "hidden_act": "silu",
    }


def init_weights(cfg):
    """Random float32 weights under HF names (uses the global torch RNG in a fixed order)."""
    V, d, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H

    def mat(rows, cols):
        return torch.randn(rows, cols, dtype=torch.float32) * 0.1

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, dtype=torch.float32)

    w = {"model.embed_tokens.weight": mat(V, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = mat(H * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(KV * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(KV * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, H * hd)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = mat(I, d)
        w[p + "mlp.up_proj.weight"] = mat(I, d)
        w[p + "mlp.down_proj.weight"] = mat(d, I)
    w["model.norm.weight"] = norm(d)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, d)
    return w


# --- forward ------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([-x2, x1], dim=-1)


def rope_cos_sin(position_ids, head_dim, theta):
    """position_ids (B,T) int64 -> cos, sin (B,T,hd) float64, HF layout emb = cat(freqs, freqs)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = position_ids.to(torch.float64)[..., None] * inv_freq  # (B,T,hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def position_ids_from_mask(attention_mask):
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def forward(w, cfg, input_ids, attention_mask):
    """w: name -> float64 tensor (may require grad). Returns hidden (B,T,d), logits (B,T,V)."""
    B, T = input_ids.shape
    d = cfg["hidden_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    group = H // KV
    eps = cfg["rms_norm_eps"]

    embed = w["model.embed_tokens.weight"]
    x = embed[input_ids]  # (B,T,d)
    cos, sin = rope_cos_sin(position_ids_from_mask(attention_mask), hd, cfg["rope_theta"])
    cos, sin = cos[:, None], sin[:, None]  # (B,1,T,hd)

    causal = torch.ones(T, T, dtype=torch.bool).tril()  # query i sees key j <= i
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B,1,T,T)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(group, dim=1)  # kv head j serves query heads j*g .. j*g+g-1
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (B,H,T,T)
        scores = scores.masked_fill(~allowed, MASK_VALUE)
        probs = torch.softmax(scores, dim=-1)
        attn = (probs @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T

        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T

    hidden = rms_norm(x, w["model.norm.weight"], eps)
    lm_head = embed if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    logits = hidden @ lm_head.T
    return hidden, logits


def sequence_logps(logits, input_ids, loss_mask):
    """(B,) sum_t loss_mask[b,t] * log_softmax(logits[b,t-1])[input_ids[b,t]], t >= 1."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B,T-1,V), row t-1 predicts token t
    tok = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B,T-1)
    check(not loss_mask[:, 0].any(), "loss_mask must be 0 at t = 0")
    return (tok * loss_mask[:, 1:].to(tok.dtype)).sum(-1)


def to_f64(w):
    return {k: v.to(torch.float64) for k, v in w.items()}


def to_f32(t):
    return t.detach().to(torch.float32).contiguous()


# --- batches ------------------------------------------------------------------------------------

def build_row(tokens, T, left_pad, n_response):
    """Places `tokens` in a row of length T after `left_pad` pads (id 0); marks the last
    n_response real tokens in loss_mask."""
    n = len(tokens)
    ids = torch.zeros(T, dtype=torch.int64)
    mask = torch.zeros(T, dtype=torch.int64)
    lm = torch.zeros(T, dtype=torch.int64)
    ids[left_pad : left_pad + n] = tokens
    mask[left_pad : left_pad + n] = 1
    lm[left_pad + n - n_response : left_pad + n] = 1
    check(n_response < n)
    return ids, mask, lm


def stack_rows(rows):
    return tuple(torch.stack(c) for c in zip(*rows))


def write_case(outdir, name, cfg):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    V, T, B = cfg["vocab_size"], 10, 3
    w32 = init_weights(cfg)
    w = to_f64(w32)

    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(w32, os.path.join(d, "model.safetensors"))

    # row 0: no padding; row 1: left-padded by 3; row 2: right-padded by 2
    rows = [
        build_row(torch.randint(1, V, (10,)), T, 0, 4),
        build_row(torch.randint(1, V, (7,)), T, 3, 4),
        build_row(torch.randint(1, V, (8,)), T, 0, 4),
    ]
    input_ids, attention_mask, loss_mask = stack_rows(rows)
    check(input_ids.shape == (B, T))
    hidden, logits = forward(w, cfg, input_ids, attention_mask)
    seq = sequence_logps(logits, input_ids, loss_mask)
    check(torch.isfinite(logits).all())
    save_file(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "logits": to_f32(logits),
            "hidden": to_f32(hidden),
            "seq_logps": to_f32(seq),
        },
        os.path.join(d, "expected.safetensors"),
    )

    # the same sequence (prompt 5 + response 4) left-padded by 3 and right-padded by 3
    seq_tokens = torch.randint(1, V, (9,))
    T2 = 12
    rows = [build_row(seq_tokens, T2, 3, 4), build_row(seq_tokens, T2, 0, 4)]
    ids2, mask2, lm2 = stack_rows(rows)
    _, logits2 = forward(w, cfg, ids2, mask2)
    seq2 = sequence_logps(logits2, ids2, lm2)
    diff = (seq2[0] - seq2[1]).abs().item()
    check(diff < 1e-6, f"{name}: left vs right padding seq_logps differ by {diff}")
    real0 = mask2[0].bool()
    real1 = mask2[1].bool()
    check((logits2[0][real0] - logits2[1][real1]).abs().max() < 1e-9)
    save_file(
        {"input_ids": ids2, "attention_mask": mask2, "loss_mask": lm2, "seq_logps": to_f32(seq2)},
        os.path.join(d, "same_rows.safetensors"),
    )

    # self-check: the files read back equal what was computed
    back = load_file(os.path.join(d, "expected.safetensors"))
    check(torch.equal(back["input_ids"], input_ids))
    check(torch.allclose(back["logits"].double(), logits, atol=1e-6))
    wb = load_file(os.path.join(d, "model.safetensors"))
    check(set(wb) == set(w32) and all(torch.equal(wb[k], w32[k]) for k in w32))
    print(f"{name}: seq_logps {seq.tolist()}  same_rows {seq2.tolist()} (diff {diff:.2e})")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: llama_reference.py OUTDIR")
    outdir = sys.argv[1]
    torch.manual_seed(20240601)
    write_case(outdir, "gqa_tied", make_config(61, 32, 48, 2, 4, 2, True))
    write_case(outdir, "mha_untied", make_config(61, 32, 40, 2, 4, 4, False))


if __name__ == "__main__":
    main()
