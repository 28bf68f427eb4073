#!/usr/bin/env python3
"""The same shapes as dnpo_gpu_bench in plain PyTorch eager + HF transformers (on the GPU machine),
so dnpo's figures have a reference on the same card: policy forward+backward of TinyLlama-1.1B's
shape (bf16 autocast over fp32 weights, SDPA attention) and greedy generation tokens/s.
One JSON line per result. Needs torch and transformers (both on the GPU machine's image)."""
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def emit(**kw):
    print(json.dumps({"bench": "gpu_eager_reference", **kw}), flush=True)


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def main():
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      max_position_embeddings=2048, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).cuda()  # fp32 master weights
    n_matmul = sum(p.numel() for n, p in model.named_parameters()
                   if "norm" not in n and "embed_tokens" not in n)
    batch, seq = 8, 2048
    ids = torch.randint(1, cfg.vocab_size, (batch, seq), device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()

    torch.cuda.reset_peak_memory_stats()
    s = timed(step, 2, 5)
    tokens = batch * seq
    flops = tokens * (6 * n_matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq)
    peak = 989e12 if "PCIe" not in torch.cuda.get_device_name(0) else 756e12
    emit(name="policy_fwd_bwd", batch=batch, seq=seq, ms=s * 1e3, tokens_per_s=tokens / s,
         tflops=flops / s / 1e12, mfu=flops / s / peak,
         peak_gib=torch.cuda.max_memory_allocated() / 2**30)

    model.zero_grad(set_to_none=True)
    gen_model = model.to(torch.bfloat16).eval()
    prompts = torch.randint(1, cfg.vocab_size, (32, 128), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        def generate():
            return gen_model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                      max_new_tokens=128, min_new_tokens=128, do_sample=False,
                                      pad_token_id=0, eos_token_id=None)
        s = timed(generate, 1, 1)
    emit(name="generate_greedy", prompts=32, prompt_len=128, new_tokens=128,
         tokens_per_s=32 * 128 / s, s=s, peak_gib=torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
