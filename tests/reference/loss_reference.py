"""Golden data for the SPIN and NPO losses (docs/algorithm.md): values and gradients.

Usage: /usr/bin/python3 loss_reference.py OUTDIR  -> OUTDIR/{npo_common,npo_a,npo_b}/...
Policy and reference are tiny Llamas (the llama_reference.py forward); float64 math from float32
weights, expected values stored as F32. Does not cover DSL labeling or the training loop.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import forward, init_weights, make_config, sequence_logps, to_f32, to_f64  # noqa: E402
from safetensors_io import check, load_file, save_file  # noqa: E402

BETA = 0.1
T = 10

CASES = {
    "npo_a": {"head": "ln_gelu_linear", "scale": 1.0, "penalty": "mean", "alpha": 1.0,
              "penalty_positions": "response", "max_sigma": 0.0, "beta": BETA},
    "npo_b": {"head": "linear", "scale": 0.7, "penalty": "mean_sq", "alpha": 0.5,
              "penalty_positions": "all", "max_sigma": 1.2, "beta": BETA},
}


# --- batch --------------------------------------------------------------------------------------

def build_pairs(vocab):
    """Right-padded chosen/rejected batches sharing prompts; loss_mask = response positions."""
    plan = [  # (prompt_len, chosen_len, rejected_len)
        (3, 5, 3),
        (4, 4, 6),
        (5, 5, 2),
    ]
    out = {k: torch.zeros(len(plan), T, dtype=torch.int64) for k in (
        "chosen_ids", "chosen_attention", "chosen_loss_mask",
        "rejected_ids", "rejected_attention", "rejected_loss_mask")}
    for b, (p, rc, rj) in enumerate(plan):
        prompt = torch.randint(1, vocab, (p,))
        for side, r in (("chosen", rc), ("rejected", rj)):
            resp = torch.randint(1, vocab, (r,))
            out[side + "_ids"][b, :p] = prompt
            out[side + "_ids"][b, p : p + r] = resp
            out[side + "_attention"][b, : p + r] = 1
            out[side + "_loss_mask"][b, p : p + r] = 1
    return out


# --- noise head ---------------------------------------------------------------------------------

def init_head(kind, d, vocab):
    if kind == "ln_gelu_linear":
        return {
            "norm.weight": 1.0 + 0.1 * torch.randn(d, dtype=torch.float32),
            "norm.bias": 0.1 * torch.randn(d, dtype=torch.float32),
            "proj.weight": 0.1 * torch.randn(vocab, d, dtype=torch.float32),
        }
    if kind == "linear":
        return {
            "proj.weight": 0.1 * torch.randn(vocab, d, dtype=torch.float32),
            "proj.bias": 0.1 * torch.randn(vocab, dtype=torch.float32),
        }
    raise ValueError(kind)


def head_f(kind, p, h):
    """f_phi(h): h (N,d) -> (N,V)."""
    if kind == "ln_gelu_linear":
        mu = h.mean(-1, keepdim=True)
        var = (h - mu).pow(2).mean(-1, keepdim=True)  # biased variance
        y = (h - mu) / torch.sqrt(var + 1e-5) * p["norm.weight"] + p["norm.bias"]
        y = 0.5 * y * (1.0 + torch.erf(y / 2.0 ** 0.5))  # exact GELU
        return y @ p["proj.weight"].T
    return h @ p["proj.weight"].T + p["proj.bias"]


def sigma(settings, p, h):
    s = settings["scale"] * torch.exp(head_f(settings["head"], p, h))
    if settings["max_sigma"] > 0:
        s = torch.clamp(s, max=settings["max_sigma"])
    return s


# --- losses -------------------------------------------------------------------------------------

def policy_logps(w, cfg, batch):
    pc = sequence_logps(forward(w, cfg, batch["chosen_ids"], batch["chosen_attention"])[1],
                        batch["chosen_ids"], batch["chosen_loss_mask"])
    pr = sequence_logps(forward(w, cfg, batch["rejected_ids"], batch["rejected_attention"])[1],
                        batch["rejected_ids"], batch["rejected_loss_mask"])
    return pc, pr


def reference_stats(w_ref, cfg, batch):
    with torch.no_grad():
        rc = sequence_logps(forward(w_ref, cfg, batch["chosen_ids"], batch["chosen_attention"])[1],
                            batch["chosen_ids"], batch["chosen_loss_mask"])
        h, z = forward(w_ref, cfg, batch["rejected_ids"], batch["rejected_attention"])
        rr = sequence_logps(z, batch["rejected_ids"], batch["rejected_loss_mask"])
    return rc, rr, h, z


def response_positions(batch):
    idx = batch["rejected_loss_mask"].nonzero()  # (N,2) row-major: b ascending, then t
    rows_b, rows_t = idx[:, 0], idx[:, 1]
    targets = batch["rejected_ids"][rows_b, rows_t]
    return rows_b, rows_t - 1, targets  # logits/hidden row is at t-1


def noisy_rejected(z_resp, s, eps, targets, rows_b, B):
    vals = torch.log_softmax(z_resp + s * eps, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return torch.zeros(B, dtype=vals.dtype).index_add(0, rows_b, vals)


def npo_losses(settings, w, head, cfg, batch, ref, eps1, eps2):
    """Returns a dict of the NPO quantities (float64, graph attached)."""
    pc, pr = policy_logps(w, cfg, batch)
    rc, rr, h, z = ref
    B = pc.shape[0]
    rows_b, rows_t, targets = response_positions(batch)
    h_resp, z_resp = h[rows_b, rows_t], z[rows_b, rows_t]  # (N,d), (N,V)
    s = sigma(settings, head, h_resp)  # (N,V)
    nr1 = noisy_rejected(z_resp, s.detach(), eps1, targets, rows_b, B)
    nr2 = noisy_rejected(z_resp, s, eps2, targets, rows_b, B)
    m1 = (pc - pr) - (rc - nr1)
    m2 = (pc - pr).detach() - (rc - nr2)
    beta = settings["beta"]
    model_loss = F.softplus(-beta * m1).mean()
    noise_loss = F.softplus(-beta * m2).mean()
    if settings["penalty_positions"] == "response":
        s_pen = s
    else:
        s_pen = sigma(settings, head, h.reshape(-1, h.shape[-1]))  # (B*T,V)
    penalty = s_pen.mean() if settings["penalty"] == "mean" else s_pen.pow(2).mean()
    total = model_loss - noise_loss + settings["alpha"] * penalty
    return {
        "noisy_rejected_logps_1": nr1, "noisy_rejected_logps_2": nr2,
        "model_loss": model_loss, "noise_loss": noise_loss, "penalty": penalty, "total": total,
        "mean_s": s.mean(), "margins": m1, "reward_accuracy": (m1 > 0).double().mean(),
        "sigma": s, "s_pen": s_pen,
    }


def grads(out, params, retain=True):
    g = torch.autograd.grad(out, list(params.values()), retain_graph=retain, allow_unused=True)
    return {k: (torch.zeros_like(p) if gi is None else gi) for (k, p), gi in zip(params.items(), g)}


def fd_check(fn, params, name, index, analytic, step=1e-6):
    """Central finite difference of scalar fn() w.r.t. params[name][index]."""
    p = params[name]
    with torch.no_grad():
        orig = p[index].item()
        p[index] = orig + step
        up = fn().item()
        p[index] = orig - step
        down = fn().item()
        p[index] = orig
    fd = (up - down) / (2 * step)
    a = analytic[name][index].item()
    check(abs(fd - a) <= 1e-6 + 1e-5 * abs(a), f"fd check {name}{index}: fd {fd} vs autograd {a}")


# --- main ---------------------------------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        sys.exit("usage: loss_reference.py OUTDIR")
    outdir = sys.argv[1]
    torch.manual_seed(3)  # seed picked so reward accuracy is neither 0 nor 1
    cfg = make_config(61, 32, 48, 2, 4, 2, True)
    V, d = cfg["vocab_size"], cfg["hidden_size"]

    policy32 = init_weights(cfg)
    ref32 = {k: v + 0.05 * torch.randn_like(v) for k, v in policy32.items()}
    batch = build_pairs(V)
    N = int(batch["rejected_loss_mask"].sum())
    eps1_32 = torch.randn(N, V, dtype=torch.float32)
    eps2_32 = torch.randn(N, V, dtype=torch.float32)
    heads32 = {name: init_head(st["head"], d, V) for name, st in CASES.items()}

    common = os.path.join(outdir, "npo_common")
    os.makedirs(common, exist_ok=True)
    with open(os.path.join(common, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(policy32, os.path.join(common, "policy.safetensors"))
    save_file(ref32, os.path.join(common, "reference.safetensors"))
    save_file(dict(batch, eps1=eps1_32, eps2=eps2_32), os.path.join(common, "batch.safetensors"))

    w = {k: v.requires_grad_(True) for k, v in to_f64(policy32).items()}
    w_ref = to_f64(ref32)
    eps1, eps2 = eps1_32.double(), eps2_32.double()
    ref = reference_stats(w_ref, cfg, batch)
    rc, rr = ref[0], ref[1]

    # --- SPIN ---
    def spin_loss():
        pc, pr = policy_logps(w, cfg, batch)
        return F.softplus(-(BETA * ((pc - rc) - (pr - rr)))).mean(), pc, pr

    loss_spin, pc, pr = spin_loss()
    g_spin = grads(loss_spin, w)
    fd_check(lambda: spin_loss()[0], w, "model.embed_tokens.weight", (5, 3), g_spin)
    fd_check(lambda: spin_loss()[0], w, "model.layers.1.self_attn.k_proj.weight", (2, 7), g_spin)
    spin = {
        "policy_chosen_logps": to_f32(pc), "policy_rejected_logps": to_f32(pr),
        "reference_chosen_logps": to_f32(rc), "reference_rejected_logps": to_f32(rr),
        "loss_spin": to_f32(loss_spin).reshape(1),
    }
    spin.update({"grad." + k: to_f32(g) for k, g in g_spin.items()})
    save_file(spin, os.path.join(common, "expected_spin.safetensors"))
    print(f"spin: loss {loss_spin.item():.6f} pc {pc.tolist()} pr {pr.tolist()}")

    # --- NPO cases ---
    rows_b, rows_t, targets = response_positions(batch)
    zero_noise = noisy_rejected(ref[3][rows_b, rows_t], torch.zeros(N, V, dtype=torch.float64),
                                eps1, targets, rows_b, 3)
    check(torch.allclose(zero_noise, rr, atol=1e-12), "noisy_rr with s = 0 must equal rr")

    for name, st in CASES.items():
        head = {k: v.requires_grad_(True) for k, v in to_f64(heads32[name]).items()}
        out = npo_losses(st, w, head, cfg, batch, ref, eps1, eps2)
        g_pol = grads(out["total"], w)
        g_head = grads(out["total"], head)
        # gradient routing: model loss reaches only theta, noise loss and penalty only phi
        g_ml_head = grads(out["model_loss"], head)
        check(all(torch.count_nonzero(g) == 0 for g in g_ml_head.values()), "model_loss -> head")
        g_nl_pol = grads(-out["noise_loss"] + st["alpha"] * out["penalty"], w)
        check(all(torch.count_nonzero(g) == 0 for g in g_nl_pol.values()), "noise_loss -> policy")
        check(any(torch.count_nonzero(g) > 0 for g in g_head.values()))

        # finite differences see the values, not the stop-gradients: check the head gradient
        # on -noise_loss + alpha*penalty and the policy gradient on model_loss
        def phi_objective():
            o = npo_losses(st, w, head, cfg, batch, ref, eps1, eps2)
            return -o["noise_loss"] + st["alpha"] * o["penalty"]

        def theta_objective():
            return npo_losses(st, w, head, cfg, batch, ref, eps1, eps2)["model_loss"]

        fd_check(phi_objective, head, "proj.weight", (7, 4), g_head)
        fd_check(phi_objective, head, "proj.weight", (20, 11), g_head)
        fd_check(theta_objective, w, "model.layers.0.mlp.up_proj.weight", (3, 9), g_pol)
        if st["max_sigma"] > 0:
            raw = st["scale"] * torch.exp(head_f(st["head"], head, ref[2][rows_b, rows_t]))
            frac_resp = (raw > st["max_sigma"]).double().mean().item()
            raw_all = st["scale"] * torch.exp(head_f(st["head"], head, ref[2].reshape(-1, d)))
            frac_all = (raw_all > st["max_sigma"]).double().mean().item()
            check(0.02 < frac_resp < 0.98 and 0.02 < frac_all < 0.98, (frac_resp, frac_all))
            print(f"{name}: clamped fraction response {frac_resp:.3f}, all {frac_all:.3f}")

        case_dir = os.path.join(outdir, name)
        os.makedirs(case_dir, exist_ok=True)
        save_file(heads32[name], os.path.join(case_dir, "head.safetensors"))
        with open(os.path.join(case_dir, "settings.json"), "w") as f:
            json.dump(st, f, indent=2)
        exp = {}
        for k in ("noisy_rejected_logps_1", "noisy_rejected_logps_2", "margins", "sigma"):
            exp[k] = to_f32(out[k])
        for k in ("model_loss", "noise_loss", "penalty", "total", "mean_s", "reward_accuracy"):
            exp[k] = to_f32(out[k]).reshape(1)
        exp.update({"grad." + k: to_f32(g) for k, g in g_pol.items()})
        exp.update({"grad_head." + k: to_f32(g) for k, g in g_head.items()})
        save_file(exp, os.path.join(case_dir, "expected.safetensors"))
        back = load_file(os.path.join(case_dir, "expected.safetensors"))
        check(set(back) == set(exp) and all(torch.equal(back[k], exp[k]) for k in exp))
        print(f"{name}: total {out['total'].item():.6f} model {out['model_loss'].item():.6f} "
              f"noise {out['noise_loss'].item():.6f} penalty {out['penalty'].item():.6f} "
              f"mean_s {out['mean_s'].item():.4f} margins {out['margins'].tolist()}")


if __name__ == "__main__":
    main()
