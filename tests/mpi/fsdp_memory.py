#!/usr/bin/python3
"""Per-rank model-state memory of FSDP training shrinks with the world size (issue #3's bound).

Model-state memory = peak RSS of a run that builds policy, reference, noise head and optimizer for
a >= 100M-parameter model and takes one NPO step, minus the peak RSS of the same run with a tiny
model (the runtime baseline). At np = 4 the largest rank's value must be at most
    1.1 x (the np = 1 value / 4) + two units' gather buffers + activations of one unit.
dist.reshard_after_forward is "auto", the default. Prints every figure (recorded in
benchmarks/RESULTS.md). Env: DNPO_BENCH_BIN (build/bin).
"""
import json
import os
import subprocess
import sys

BIN = os.path.join(os.environ["DNPO_BENCH_BIN"], "dnpo_fsdp_bench")


def check(cond, msg=""):
    """Raises AssertionError(msg) unless cond: an assert that `python -O` keeps."""
    if not cond:
        raise AssertionError(msg)


# dist.reshard_after_forward as dnpo_dist's default ("auto"): the bound must hold with defaults.
COMMON = ["--loss", "npo", "--batch", "4", "--micro", "1", "--prompt-len", "4",
          "--response-len", "4", "--steps", "0", "--warmup", "1", "--reshard-after-forward", "auto"]
BIG = ["--vocab", "32000", "--hidden", "768", "--layers", "12", "--intermediate", "2048",
       "--heads", "12"]
TINY = ["--vocab", "260", "--hidden", "64", "--layers", "2"]


def run(np, model):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(["mpirun", "-np", str(np), "--oversubscribe", BIN, *COMMON, *model],
                         env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    big1, tiny1 = run(1, BIG), run(1, TINY)
    big4, tiny4 = run(4, BIG), run(4, TINY)
    params = big1["config"]["params"]
    check(params >= 100_000_000, params)
    state1 = big1["peak_rss_mib"][0] - tiny1["peak_rss_mib"][0]
    state4 = [b - t for b, t in zip(big4["peak_rss_mib"], tiny4["peak_rss_mib"])]
    cfg = big1["config"]
    unit_mib = cfg["largest_unit"] * 4 / 2**20  # fp32 gather buffer of the largest unit
    # Activations of one unit: the largest per-unit working set of this batch, the lm_head's
    # logits at the response rows (log-softmax and its gradient alongside) or a block's
    # intermediate tensors; both are far below a MiB here.
    tokens = 2 * (cfg["prompt_len"] + cfg["response_len"] + 1)
    act_mib = max(3 * tokens * cfg["vocab"], tokens * (10 * cfg["hidden"] + 3 * cfg["intermediate"])) \
        * 4 / 2**20
    bound = 1.1 * state1 / 4 + 2 * unit_mib + act_mib
    print(f"params {params / 1e6:.1f} M; np=1 model state {state1:.0f} MiB "
          f"(peak {big1['peak_rss_mib'][0]:.0f} - baseline {tiny1['peak_rss_mib'][0]:.0f})")
    print(f"np=4 model state per rank {[round(x) for x in state4]} MiB; bound "
          f"1.1 x {state1:.0f}/4 + 2 x {unit_mib:.1f} + {act_mib:.1f} = {bound:.0f} MiB; "
          f"largest/ideal (np1/4) = {max(state4) / (state1 / 4):.2f}")
    print(f"np=4 under \"auto\": units {'kept gathered' if big4['config']['kept_gathered'] else 'resharded'}")
    check(max(state4) <= bound, f"np=4 per-rank model state {max(state4):.0f} MiB > {bound:.0f}")


if __name__ == "__main__":
    sys.exit(main())
