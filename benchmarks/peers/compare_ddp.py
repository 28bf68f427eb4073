#!/usr/bin/python3
"""dnpo's sharded step at np 2 (dnpo_fsdp_bench, both dist.reshard_after_forward settings) side by
side with PyTorch DDP at np 2 (ddp_peer.py) on the same weights and batch (dnpo_step_bench --dump
writes them; the shapes and the seed are the same). Runs interleave, `--reps` times; each result
is the median of the per-run medians, with the speed-up (peer time / dnpo time). Both sides'
first- and second-step losses must agree within 1e-5 (same_work) or the script exits 1. One JSON
line per result.
Usage: compare_ddp.py --bin BUILD/bin --shape "--vocab V --hidden C --layers L --batch B
       --prompt-len P --response-len R" [--steps N --reps R --threads T --losses sft,spin]
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
WORLD = 2
MPIRUN = ["mpirun", "-np", str(WORLD), "--oversubscribe", "--bind-to", "none"]


def last_json_lines(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shape", required=True, help="dnpo_step_bench shape flags")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default="sft,spin")
    args = ap.parse_args()
    shape = shlex.split(args.shape)
    hidden = int(shape[shape.index("--hidden") + 1])
    # dnpo_step_bench's model: hidden/32 heads, tied embeddings (dnpo_fsdp_bench's defaults differ)
    heads = max(1, hidden // 32)
    failed = False
    for loss in args.losses.split(","):
        with tempfile.TemporaryDirectory() as dump:
            subprocess.run([f"{args.bin}/dnpo_step_bench", "--loss", loss, *shape,
                            "--steps", str(args.steps), "--threads", str(args.threads),
                            "--dump", dump, "--dump-only"],
                           check=True, capture_output=True)
            dnpo = {reshard: [] for reshard in (1, 0)}
            peer = []
            for rep in range(args.reps):
                for reshard in (1, 0):
                    dnpo[reshard].append(last_json_lines(
                        MPIRUN + [f"{args.bin}/dnpo_fsdp_bench", "--loss", loss, *shape,
                                  "--heads", str(heads), "--tied", "--warmup", "2",
                                  "--steps", str(args.steps), "--threads", str(args.threads),
                                  "--reshard-after-forward", str(reshard)])[-1])
                peer.append({r["metric"]: r for r in last_json_lines(
                    MPIRUN + ["/usr/bin/python3", f"{HERE}/ddp_peer.py", "--dump", dump,
                              "--steps", str(args.steps), "--threads", str(args.threads),
                              "--port", str(29600 + rep)])})
        peer_ms = [p["step_time_median"]["value"] for p in peer]
        peer_loss = peer[0]["first_step_loss"]["value"]
        peer_second = peer[0]["second_step_loss"]["value"]
        for reshard in (1, 0):
            runs = [r["value"] for r in dnpo[reshard]]
            dnpo_loss = dnpo[reshard][0]["first_step_loss"]
            dnpo_second = dnpo[reshard][0]["second_step_loss"]
            # SPIN's first loss is ln 2 whatever the batch (policy = reference): the second step's,
            # after one clipped AdamW update on the same schedule, must agree too.
            same = all(abs(a - b) <= 1e-5 * max(1.0, abs(b))
                       for a, b in ((dnpo_loss, peer_loss), (dnpo_second, peer_second)))
            failed |= not same
            value, peer_value = statistics.median(runs), statistics.median(peer_ms)
            print(json.dumps({
                "name": f"ddp.{loss}",
                "config": {**dnpo[reshard][0]["config"], "world": WORLD},
                "metric": "step_time_median", "value": value, "unit": "ms",
                "peer": "PyTorch DDP (Gloo)", "peer_value": peer_value,
                "ratio": peer_value / value,
                "runs": [round(x, 1) for x in runs], "peer_runs": [round(x, 1) for x in peer_ms],
                "first_step_loss": dnpo_loss, "peer_first_step_loss": peer_loss,
                "second_step_loss": dnpo_second, "peer_second_step_loss": peer_second,
                "same_work": same,
                "peak_rss_mib_per_rank": dnpo[reshard][0]["peak_rss_mib"]}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
