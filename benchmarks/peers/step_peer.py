#!/usr/bin/python3
"""Python peers of dnpo's training steps, written as a PyTorch user would (Debian's python3-torch:
the same LibTorch version and BLAS as dnpo), on the weights and batch `dnpo_step_bench --dump DIR`
wrote:

  sft   next-token cross-entropy on the response tokens.
  spin  TRL's DPO step (sigmoid loss) with one concatenated policy forward and a no-grad reference
        forward: SPIN's loss.
  npo   the DNPO authors' formulation: the noise head predicts a scale for every position and
        vocabulary entry of the negatives, Gaussian noise of shape [B, T, V] is added to the
        reference logits twice (ε1 with the scale detached for the model loss, ε2 for the noise
        loss), plus the penalty on the scale.

The first step runs on dnpo's own draws for ε (dumped at the response positions; the others do
not enter the loss), so its loss must equal dnpo's first-step loss: both sides do the same work.
The learning-rate schedule is dnpo's, so for SFT and SPIN the second step's loss (after one AdamW
update with gradient clipping) must match too. Later steps draw ε with torch.randn, as the
authors do. One JSON line per metric on stdout.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "reference"))
import safetensors_io  # noqa: E402  (the repository's own reader, also used by the golden tests)


def trainable(weights):
    """fp32 copies of named tensors as parameters ('.' is not allowed in ParameterDict keys)."""
    return torch.nn.ParameterDict(
        {k.replace(".", "/"): torch.nn.Parameter(v.float().clone()) for k, v in weights.items()})


class Llama(torch.nn.Module):
    """Llama as in HF transformers (RMSNorm, rotary, grouped-query attention, SwiGLU), fp32."""

    def __init__(self, cfg, weights):
        super().__init__()
        self.cfg = cfg
        self.params = trainable(weights)

    def w(self, name):
        return self.params[name.replace(".", "/")]

    def forward(self, input_ids, attention_mask):
        """Returns the final hidden states (B, T, C) and the output embedding (V, C)."""
        cfg = self.cfg
        B, T = input_ids.shape
        H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg["hidden_size"] // H
        eps = cfg["rms_norm_eps"]

        def rms(x, weight):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

        def rotate_half(x):
            return torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], dim=-1)

        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0).float()
        inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        freqs = positions[..., None] * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B,1,T,hd)
        cos, sin = emb.cos(), emb.sin()
        allowed = (torch.ones(T, T, dtype=torch.bool).tril()[None, None] &
                   attention_mask.bool()[:, None, None, :])
        x = self.w("model.embed_tokens.weight")[input_ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, self.w(p + "input_layernorm.weight"))
            q = F.linear(h, self.w(p + "self_attn.q_proj.weight")).view(B, T, H, hd).transpose(1, 2)
            k = F.linear(h, self.w(p + "self_attn.k_proj.weight")).view(B, T, KV, hd).transpose(1, 2)
            v = F.linear(h, self.w(p + "self_attn.v_proj.weight")).view(B, T, KV, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if KV != H:
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
            scores = (q @ k.transpose(-1, -2)) / hd ** 0.5
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            attn = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, H * hd)
            x = x + F.linear(attn, self.w(p + "self_attn.o_proj.weight"))
            h = rms(x, self.w(p + "post_attention_layernorm.weight"))
            x = x + F.linear(F.silu(F.linear(h, self.w(p + "mlp.gate_proj.weight"))) *
                             F.linear(h, self.w(p + "mlp.up_proj.weight")),
                             self.w(p + "mlp.down_proj.weight"))
        hidden = rms(x, self.w("model.norm.weight"))
        lm_head = (self.w("model.embed_tokens.weight") if cfg.get("tie_word_embeddings")
                   else self.w("lm_head.weight"))
        return hidden, lm_head


def sequence_logps(logits, input_ids, loss_mask):
    """(B,) Σ_t loss_mask[b,t] · log softmax(logits[b,t-1])[input_ids[b,t]] (TRL's get_batch_logps)."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    tok = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (tok * loss_mask[:, 1:].to(tok.dtype)).sum(-1)


class NoiseHead(torch.nn.Module):
    """s = c · exp(f(h)), f = Linear(GELU(LayerNorm(h))) or Linear(h); clamped at max_sigma."""

    def __init__(self, settings, weights):
        super().__init__()
        self.s = settings
        self.params = trainable(weights)

    def forward(self, h):
        p = {k.replace("/", "."): v for k, v in self.params.items()}
        if self.s["head"] == "ln_gelu_linear":
            y = F.gelu(F.layer_norm(h, h.shape[-1:], p["norm.weight"], p["norm.bias"], 1e-5))
            f = F.linear(y, p["proj.weight"])
        else:
            f = F.linear(h, p["proj.weight"], p["proj.bias"])
        s = self.s["scale"] * torch.exp(f)
        return s.clamp(max=self.s["max_sigma"]) if self.s["max_sigma"] > 0 else s


def optimizer_and_schedule(settings, params, total_steps):
    """torch.optim's AdamW or RMSprop with dnpo's hyperparameters, and dnpo's learning-rate schedule
    (train/lr_schedule.h): linear warm-up over ceil(ratio × total) steps, then linear decay to
    lr × min_lr_ratio, or constant."""
    if settings["optimizer"] == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=settings["lr"], eps=settings["eps"],
                                  weight_decay=settings["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=settings["lr"], eps=settings["eps"],
                                betas=(settings["adam_beta1"], settings["adam_beta2"]),
                                weight_decay=settings["weight_decay"])
    warmup = int(settings["warmup_ratio"] * total_steps + 0.999999)

    def lr_factor(k):
        if warmup > 0 and k < warmup:
            return (k + 1) / warmup
        if settings["lr_schedule"] == "constant":
            return 1.0
        progress = min(1.0, (k - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress * (1.0 - settings["min_lr_ratio"])

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True, help="the directory dnpo_step_bench --dump wrote")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after two warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", help="write LibTorch's op trace of every step (chrome JSON)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)

    with open(f"{args.dump}/settings.json") as f:
        settings = json.load(f)
    with open(f"{args.dump}/policy/config.json") as f:
        cfg = json.load(f)
    weights = safetensors_io.load_dir(f"{args.dump}/policy")
    batch = safetensors_io.load_file(f"{args.dump}/batch.safetensors")
    loss_kind, beta = settings["loss"], settings["beta"]
    ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    B = ids.shape[0] // 2

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    policy = Llama(cfg, weights)
    params = list(policy.parameters())
    reference = head = None
    if loss_kind != "sft":
        reference = Llama(cfg, weights).requires_grad_(False)
    if loss_kind == "npo":
        head = NoiseHead(settings["npo"],
                         safetensors_io.load_file(f"{args.dump}/head.safetensors"))
        params += list(head.parameters())
    total_steps = args.steps + 2
    if total_steps != settings["total_steps"]:
        sys.exit(f"step_peer: --steps {args.steps} + 2 warm-up steps != dnpo's "
                 f"{settings['total_steps']} (the schedules would differ)")
    opt, sched = optimizer_and_schedule(settings, params, total_steps)

    def npo_noise(step):
        """ε1, ε2 over [B, T, V]: dnpo's draws at the response rows on step 0, else randn."""
        shape = (B, ids.shape[1], cfg["vocab_size"])
        if step > 0:
            return torch.randn(shape), torch.randn(shape)
        rows = loss_mask[B:].nonzero()  # (N, 2) in dnpo's row order: b, then t
        e1, e2 = torch.zeros(shape), torch.zeros(shape)
        e1[rows[:, 0], rows[:, 1] - 1] = batch["eps1"]  # token t is predicted at row t-1
        e2[rows[:, 0], rows[:, 1] - 1] = batch["eps2"]
        return e1, e2

    def phase(name):
        """Names a phase for the profiler, as dnpo's trainer does (op_table.py sums them)."""
        return torch.autograd.profiler.record_function(f"peer::{name}")

    def step_loss(step):
        """The loss to backpropagate and the one dnpo reports (the model loss for NPO)."""
        with phase("policy_forward"):
            hidden, lm_head = policy(ids, mask)
            logps = sequence_logps(hidden @ lm_head.T, ids, loss_mask)
        if loss_kind == "sft":
            loss = -logps.sum() / loss_mask.sum()
            return loss, loss
        pc, pr = logps[:B], logps[B:]
        with torch.no_grad(), phase("reference_forward"):
            ref_hidden, ref_lm_head = reference(ids, mask)
            ref_logits = ref_hidden @ ref_lm_head.T
            ref_logps = sequence_logps(ref_logits, ids, loss_mask)
        rc, rr = ref_logps[:B], ref_logps[B:]
        if loss_kind == "spin":
            loss = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
            return loss, loss
        npo = settings["npo"]
        s = head(ref_hidden[B:])  # (B, T, V): every position of the negatives
        eps1, eps2 = npo_noise(step)
        neg_logits, neg_ids, neg_mask = ref_logits[B:], ids[B:], loss_mask[B:]
        nr1 = sequence_logps(neg_logits + s.detach() * eps1, neg_ids, neg_mask)
        nr2 = sequence_logps(neg_logits + s * eps2, neg_ids, neg_mask)
        m1 = (pc - pr) - (rc - nr1)
        m2 = (pc - pr).detach() - (rc - nr2)
        model_loss = F.softplus(-beta * m1).mean()
        noise_loss = F.softplus(-beta * m2).mean()
        if npo["penalty_positions"] == "response":
            rows = neg_mask.nonzero()
            s_pen = s[rows[:, 0], rows[:, 1] - 1]
        else:
            s_pen = s
        penalty = s_pen.mean() if npo["penalty"] == "mean" else s_pen.pow(2).mean()
        return model_loss - noise_loss + npo["alpha"] * penalty, model_loss

    times, losses = [], []
    profiler = torch.autograd.profiler.profile(use_kineto=False) if args.profile else None  # dnpo_step_bench uses the legacy profiler too
    if profiler:
        profiler.__enter__()
    for step in range(total_steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, reported = step_loss(step)
        with phase("backward"):
            loss.backward()
        with phase("clip_grad_norm"):
            if settings["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, settings["grad_clip"])
        with phase("optimizer"):
            opt.step()
            sched.step()
        times.append((time.perf_counter() - start) * 1e3)
        if step < 2:
            losses.append(reported.item())
    if profiler:
        profiler.__exit__(None, None, None)
        profiler.export_chrome_trace(args.profile)
    timed = sorted(times[2:])
    name = {"sft": "peer.sft", "spin": "peer.spin_trl", "npo": "peer.npo_authors"}[loss_kind]
    config = {"loss": loss_kind, "threads": args.threads, "batch": B if loss_kind != "sft" else
              ids.shape[0], "seq_len": ids.shape[1], "vocab": cfg["vocab_size"]}
    for metric, value, unit in (
            ("step_time_median", timed[len(timed) // 2], "ms"),
            ("peak_rss_added",
             (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, "MiB"),
            ("first_step_loss", losses[0], ""),
            # NPO's second step draws ε with randn here, so only SFT's and SPIN's compare
            ("second_step_loss", losses[1], "")):
        print(json.dumps({"name": name, "config": config, "metric": metric, "value": value,
                          "unit": unit}))


if __name__ == "__main__":
    main()
