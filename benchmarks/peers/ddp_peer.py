#!/usr/bin/python3
"""Python peer of dnpo's multi-rank step: PyTorch DistributedDataParallel over Gloo, one process
per rank (start it under mpirun; the rank and world come from Open MPI's environment), on the
weights and batch `dnpo_step_bench --dump DIR` wrote. Each rank trains its contiguous share of the
batch (for SPIN, its share of the pairs), DDP averages the gradients, then clipping and the optimizer run
on every replica, as a PyTorch user writes it. The model and the losses are step_peer.py's (SFT;
SPIN in TRL's form); the first step's loss, summed over ranks, must equal dnpo's at the same world
size. Rank 0 prints one JSON line per metric.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import safetensors_io  # noqa: E402
from step_peer import Llama, optimizer_and_schedule, sequence_logps  # noqa: E402


class Policy(torch.nn.Module):
    """The loss inside forward, so that DDP's hooks see one module call per step."""

    def __init__(self, cfg, weights):
        super().__init__()
        self.llama = Llama(cfg, weights)

    def forward(self, ids, mask, loss_mask):
        hidden, lm_head = self.llama(ids, mask)
        return sequence_logps(hidden @ lm_head.T, ids, loss_mask)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after two warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--port", type=int, default=29517)
    args = ap.parse_args()
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank,
                            world_size=world)

    with open(f"{args.dump}/settings.json") as f:
        settings = json.load(f)
    with open(f"{args.dump}/policy/config.json") as f:
        cfg = json.load(f)
    loss_kind, beta = settings["loss"], settings["beta"]
    if loss_kind not in ("sft", "spin"):
        sys.exit(f"ddp_peer: loss {loss_kind!r}: only sft and spin have a DDP peer")
    weights = safetensors_io.load_dir(f"{args.dump}/policy")
    batch = safetensors_io.load_file(f"{args.dump}/batch.safetensors")
    ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    samples = ids.shape[0] if loss_kind == "sft" else ids.shape[0] // 2
    if samples % world:
        sys.exit(f"ddp_peer: {samples} samples do not split over {world} ranks")
    share = samples // world
    mine = slice(rank * share, (rank + 1) * share)
    if loss_kind == "sft":
        rows = torch.arange(samples)[mine]
    else:  # this rank's chosen rows, then the same pairs' rejected rows
        rows = torch.cat([torch.arange(samples)[mine], samples + torch.arange(samples)[mine]])
    my_ids, my_mask, my_loss_mask = ids[rows], mask[rows], loss_mask[rows]
    global_tokens = loss_mask.sum()

    policy = DistributedDataParallel(Policy(cfg, weights))
    reference = Policy(cfg, weights).requires_grad_(False) if loss_kind == "spin" else None
    params = list(policy.parameters())
    total_steps = args.steps + 2
    if total_steps != settings["total_steps"]:
        sys.exit("ddp_peer: the dump's schedule has another step count than this peer's")
    opt, sched = optimizer_and_schedule(settings, params, total_steps)

    def local_loss():
        """This rank's part of the global loss, scaled by world (DDP averages gradients)."""
        logps = policy(my_ids, my_mask, my_loss_mask)
        if loss_kind == "sft":
            return -logps.sum() / global_tokens * world
        with torch.no_grad():
            ref = reference(my_ids, my_mask, my_loss_mask)
        pc, pr, rc, rr = logps[:share], logps[share:], ref[:share], ref[share:]
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()

    times, losses = [], []
    for step in range(total_steps):
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = local_loss()
        loss.backward()  # DDP all-reduces the gradients in buckets while backward runs
        if settings["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, settings["grad_clip"])
        opt.step()
        sched.step()
        times.append((time.perf_counter() - start) * 1e3)
        if step < 2:
            total = loss.detach() / world
            dist.all_reduce(total)
            losses.append(float(total))
    # the step time of the slowest rank, as a synchronous job sees it
    slowest = torch.tensor(times)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    timed = sorted(slowest.tolist()[2:])
    if rank == 0:
        config = {"loss": loss_kind, "world": world, "threads": args.threads, "samples": samples,
                  "seq_len": ids.shape[1], "vocab": cfg["vocab_size"]}
        for metric, value, unit in (("step_time_median", timed[len(timed) // 2], "ms"),
                                    ("first_step_loss", losses[0], ""),
                                    ("second_step_loss", losses[1], "")):
            print(json.dumps({"name": f"peer.ddp_{loss_kind}", "config": config,
                              "metric": metric, "value": value, "unit": unit}))
    # LibTorch 1.13's Gloo process group can deadlock in its destructor while DDP's reducer still
    # holds it (a worker thread waits for the GIL the joining thread holds): leave without teardown
    # once every rank is done.
    sys.stdout.flush()
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
