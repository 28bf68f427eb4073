#!/usr/bin/python3
"""Checkpoints carry an NPO run across interruptions exactly, and across world sizes.

  reference: mpirun -np 2 dnpo_dist train --loss npo, uninterrupted
  usr1:  SIGUSR1 to mpirun mid-run -> every rank saves at the next step boundary, exit 0;
         --resume auto finishes the run
  term:  SIGTERM to the ranks themselves (as srun delivers it) -> the same
  kill9: checkpoints every 4 steps; SIGKILL to the ranks a few steps after one; --resume auto
         goes back to it (the metrics lines of the lost steps are dropped)
  Each must give bit-identical per-step losses (metrics.jsonl) and final tensors (policy, noise
  head, reference and optimizer state, read from the final checkpoint with h5py).
  reshard: the np 2 checkpoint of the usr1 case resumed at np 1 and np 4: the remaining steps'
  losses match the reference within fp32 tolerance.
  damage: a flipped byte in the newest checkpoint -> --resume auto names it, skips it, and
  resumes from the previous one; the run still ends with the reference's losses.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpi_jobs  # noqa: E402

BIN = os.path.join(os.environ["DNPO_BIN"], "dnpo_dist")
SRC = os.environ["DNPO_SOURCE_DIR"]
BOUND_S = 120 * mpi_jobs.TIME_SCALE  # generous functional bound on each run
STEPS = 32  # the interrupts come after steps 4-10: a wide margin on a loaded machine


def write_pairs(path):
    with open(path, "w") as f:
        for i in range(64):
            a, b = 10 + 7 * i % 83, 3 + 11 * i % 59
            f.write(json.dumps({"id": str(i), "prompt": f"{a}+{b}=", "chosen": str(a + b),
                                "rejected": str(a + b + 1 + i % 3)}) + "\n")


def command(work, name, np_, *extra):
    return ["mpirun", "-np", str(np_), "--oversubscribe", BIN, "train", "--loss", "npo",
            "--config", f"{SRC}/configs/demo.toml",
            "--pairs", f"{work}/pairs.jsonl",
            "--set", f'run.out_dir="{work}/runs"', "--set", f'run.name="{name}"',
            "--set", "train.batch_size=8", "--set", "train.micro_batch_size=2",
            "--set", f"train.max_steps={STEPS}", "--set", "run.log_every=1",
            "--set", "npo.chunk_positions=16", *extra]


def metrics(work, name):
    rows = [json.loads(line) for line in open(f"{work}/runs/{name}/metrics.jsonl")]
    rows = [r for r in rows if r["kind"] == "npo"]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), \
        f"{name}: steps in metrics.jsonl are not 1..n: {[r['step'] for r in rows]}"
    return rows


def steps_logged(work, name):
    try:
        return sum(1 for line in open(f"{work}/runs/{name}/metrics.jsonl") if '"npo"' in line)
    except FileNotFoundError:
        return 0


def final_tensors(work, name):
    """Every tensor of the run's last checkpoint (the stage's final one)."""
    ckpt_dir = f"{work}/runs/{name}/checkpoints"
    latest = open(f"{ckpt_dir}/latest").read().strip()
    with h5py.File(f"{ckpt_dir}/{latest}.h5", "r") as f:
        return {k: np.array(v) for k, v in f["tensors"].items()}


def run(cmd, what):
    return mpi_jobs.run(cmd, what, BOUND_S)


def interrupt(work, name, after_steps, action, *extra):
    """Starts the np 2 job, waits until `after_steps` steps are in metrics.jsonl, applies
    action(mpirun pid); returns (exit code, output)."""
    proc = subprocess.Popen(command(work, name, 2, *extra), env=mpi_jobs.environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + BOUND_S
    while steps_logged(work, name) < after_steps:
        assert proc.poll() is None, f"{name}: ended before step {after_steps}"
        assert time.monotonic() < deadline, f"{name}: no step {after_steps} in {BOUND_S} s"
        time.sleep(0.005)
    action(proc)
    out, _ = proc.communicate(timeout=BOUND_S)
    return proc.returncode, out


def same_run(work, name, ref_rows, ref_tensors):
    rows = metrics(work, name)
    assert len(rows) == STEPS, f"{name}: {len(rows)} steps logged, expected {STEPS}"
    for r, ref in zip(rows, ref_rows):
        for key in ("loss", "model_loss", "noise_loss", "penalty", "grad_norm"):
            assert r[key] == ref[key], f"{name} step {r['step']} {key}: {r[key]!r} != {ref[key]!r}"
    tensors = final_tensors(work, name)
    assert tensors.keys() == ref_tensors.keys(), f"{name}: other tensors in the final checkpoint"
    for k, v in ref_tensors.items():
        assert np.array_equal(tensors[k], v), f"{name}: final {k} differs"
    groups = sorted({k.split(".")[0] for k in tensors})
    print(f"{name}: {STEPS} losses and {len(tensors)} final tensors ({', '.join(groups)}) "
          "bit-identical to the uninterrupted run")


def main():
    work = tempfile.mkdtemp()
    try:
        write_pairs(f"{work}/pairs.jsonl")
        run(command(work, "reference", 2), "reference")
        ref_rows = metrics(work, "reference")
        ref_tensors = final_tensors(work, "reference")
        assert len(ref_rows) == STEPS
        assert any(k.startswith("noise_head.") for k in ref_tensors)
        assert any(k.startswith("optimizer.exp_avg_sq.noise_head.") for k in ref_tensors)

        # --- SIGUSR1 to mpirun ---
        code, out = interrupt(work, "usr1", 4, lambda p: p.send_signal(signal.SIGUSR1))
        assert code == 0, f"usr1: exit {code}\n{out[-3000:]}"
        assert "stopped on signal 10 after step" in out, out[-3000:]
        stopped_at = steps_logged(work, "usr1")
        assert stopped_at < STEPS, f"usr1: the signal landed after the last step ({stopped_at})"
        shutil.copytree(f"{work}/runs/usr1", f"{work}/usr1_at_stop")
        run(command(work, "usr1", 2, "--resume", "auto"), "usr1 resume")
        same_run(work, "usr1", ref_rows, ref_tensors)
        print(f"  (stopped after step {stopped_at})")

        # --- SIGTERM to the ranks ---
        def term_ranks(proc):
            for pid in mpi_jobs.rank_pids(proc.pid):
                os.kill(pid, signal.SIGTERM)
        code, out = interrupt(work, "term", 7, term_ranks)
        assert code == 0, f"term: exit {code}\n{out[-3000:]}"
        assert "stopped on signal 15 after step" in out, out[-3000:]
        run(command(work, "term", 2, "--resume", "auto"), "term resume")
        same_run(work, "term", ref_rows, ref_tensors)

        # --- SIGKILL a few steps after a periodic checkpoint ---
        every = ("--set", "checkpoint.every_steps=4")
        def kill_ranks(proc):
            for pid in mpi_jobs.rank_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
        code, _ = interrupt(work, "kill9", 10, kill_ranks, *every)
        assert code != 0, "kill9: mpirun reported success after its ranks were killed"
        lost = steps_logged(work, "kill9")
        shutil.copytree(f"{work}/runs/kill9", f"{work}/kill9_at_kill")
        run(command(work, "kill9", 2, "--resume", "auto", *every), "kill9 resume")
        same_run(work, "kill9", ref_rows, ref_tensors)
        print(f"  (killed after step {lost}; resumed from the newest periodic checkpoint)")

        # --- resharding: the np 2 checkpoint at np 1 and np 4 ---
        ckpt_dir = f"{work}/usr1_at_stop/checkpoints"
        stop_ckpt = open(f"{ckpt_dir}/latest").read().strip()
        for np_ in (1, 4):
            name = f"reshard{np_}"
            run(command(work, name, np_, "--resume", f"{ckpt_dir}/{stop_ckpt}.h5"), name)
            rows = [json.loads(line) for line in open(f"{work}/runs/{name}/metrics.jsonl")]
            steps = [r["step"] for r in rows]
            assert steps == list(range(stopped_at + 1, STEPS + 1)), f"{name}: steps {steps}"
            worst = 0.0
            for r in rows:
                ref = ref_rows[r["step"] - 1]
                for key in ("loss", "model_loss"):
                    rel = abs(r[key] - ref[key]) / max(1e-12, abs(ref[key]))
                    worst = max(worst, rel)
            assert worst < 1e-4, f"{name}: losses differ from np 2 by {worst:.2e} (relative)"
            print(f"{name}: steps {stopped_at + 1}..{STEPS} resumed from np 2, "
                  f"worst relative loss difference {worst:.1e}")

        # --- a damaged newest checkpoint: auto-resume names it and takes the previous one ---
        shutil.copytree(f"{work}/kill9_at_kill", f"{work}/runs/damaged")
        damaged_dir = f"{work}/runs/damaged/checkpoints"
        newest = open(f"{damaged_dir}/latest").read().strip()
        with h5py.File(f"{damaged_dir}/{newest}.h5", "r") as f:
            offset = f["tensors"]["policy.model.norm.weight"].id.get_offset()
        with open(f"{damaged_dir}/{newest}.h5", "r+b") as f:
            f.seek(offset + 5)
            byte = f.read(1)
            f.seek(offset + 5)
            f.write(bytes([byte[0] ^ 0x40]))
        out = run(command(work, "damaged", 2, "--resume", "auto", *every), "damaged resume")
        assert f"{newest}.h5" in out and "checksum" in out, \
            f"damaged: the damaged checkpoint was not named:\n{out[-3000:]}"
        same_run(work, "damaged", ref_rows, ref_tensors)
        print(f"  ({newest}.h5 reported as damaged and skipped; resumed from the one before)")
        print("exact_resume: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
