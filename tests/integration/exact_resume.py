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
  reshard: the np 2 checkpoint of the usr1 case resumed at np 1 and np 4, and an np 1 run stopped
  by SIGUSR1 resumed at np 2: every step's losses and every final tensor match the reference
  within fp32 tolerance (the sums run in another order), the integer state exactly.
  damage: a flipped byte in the newest checkpoint -> --resume auto names it, skips it, and
  resumes from the previous one; the run still ends with the reference's losses and tensors.
  Every resumed run must name the checkpoint it resumed from (the one the stop reported, the
  newest periodic one, the one before the damaged one) and go on after the step that checkpoint
  holds.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR, DNPO_TIME_SCALE (multiplies the time bounds).
"""
import json
import os
import re
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
from checks import TIME_SCALE, check  # noqa: E402

BIN = os.path.join(os.environ["DNPO_BIN"], "dnpo_dist")
SRC = os.environ["DNPO_SOURCE_DIR"]
STEPS = 32  # the interrupts come after steps 4-10: a wide margin on a loaded machine
# Across world sizes the sums run in another order: losses within this relative difference, and
# each final tensor within this relative (L2) difference (seen: 2e-5 after 32 steps, np 1 vs 2).
LOSS_RTOL = 1e-4
TENSOR_RTOL = 1e-3


def bound_s(np_):
    """A generous functional bound on one run: 120 s (an idle 2-core machine takes 4-10 s) for up
    to two ranks, growing with the ranks that share the cores (np 4 once took 120 s on a busy
    machine), times DNPO_TIME_SCALE."""
    return 120 * max(1.0, np_ / 2) * TIME_SCALE


def write_pairs(path):
    with open(path, "w") as f:
        for i in range(64):
            a, b = 10 + 7 * i % 83, 3 + 11 * i % 59
            f.write(json.dumps({"id": str(i), "prompt": f"{a}+{b}=", "chosen": str(a + b),
                                "rejected": str(a + b + 1 + i % 3)}) + "\n")


def train_args(work, name, *extra):
    """The job's dnpo_dist command line (tests/multihost starts it on several hosts)."""
    return [BIN, "train", "--loss", "npo", "--config", f"{SRC}/configs/demo.toml",
            "--pairs", f"{work}/pairs.jsonl",
            "--set", f'run.out_dir="{work}/runs"', "--set", f'run.name="{name}"',
            "--set", "train.batch_size=8", "--set", "train.micro_batch_size=2",
            "--set", f"train.max_steps={STEPS}", "--set", "run.log_every=1",
            "--set", "npo.chunk_positions=16", *extra]


def command(work, name, np_, *extra):
    return ["mpirun", "-np", str(np_), "--oversubscribe", *train_args(work, name, *extra)]


def metrics(work, name):
    rows = [json.loads(line) for line in open(f"{work}/runs/{name}/metrics.jsonl")]
    rows = [r for r in rows if r["kind"] == "npo"]
    steps = [r["step"] for r in rows]
    check(steps == list(range(1, len(rows) + 1)),
          f"{name}: steps in metrics.jsonl are not 1..n: {steps}")
    return rows


def steps_logged(work, name):
    try:
        return sum(1 for line in open(f"{work}/runs/{name}/metrics.jsonl") if '"npo"' in line)
    except FileNotFoundError:
        return 0


def checkpoint_dir(work, name):
    return f"{work}/runs/{name}/checkpoints"


def final_checkpoint(work, name):
    """The run's last checkpoint (the stage's final one): (tensors, attributes)."""
    folder = checkpoint_dir(work, name)
    with h5py.File(f"{folder}/{open(f'{folder}/latest').read().strip()}.h5", "r") as f:
        return ({k: np.array(v) for k, v in f["tensors"].items()},
                {k: f["attributes"].attrs[k] for k in f["attributes"].attrs})


def steps_done(path):
    """The optimizer steps a checkpoint file holds (read with h5py, not dnpo)."""
    with h5py.File(path, "r") as f:
        return int(f["attributes"].attrs["steps_done"])


def run(cmd, what, np_):
    return mpi_jobs.run(cmd, what, bound_s(np_))


def interrupt(work, name, after_steps, action, *extra, np_=2):
    """Starts the job, waits until `after_steps` steps are in metrics.jsonl, applies
    action(mpirun pid); returns (exit code, output)."""
    proc = subprocess.Popen(command(work, name, np_, *extra), env=mpi_jobs.environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + bound_s(np_)
    while steps_logged(work, name) < after_steps:
        check(proc.poll() is None, f"{name}: ended before step {after_steps}")
        check(time.monotonic() < deadline, f"{name}: no step {after_steps} in {bound_s(np_)} s")
        time.sleep(0.005)
    action(proc)
    out, _ = proc.communicate(timeout=bound_s(np_))
    return proc.returncode, out


def stopped(name, code, out, signum):
    """A run stopped by a signal: exit 0 and the checkpoint it saved. Returns (path, step)."""
    check(code == 0, f"{name}: exit {code}\n{out[-3000:]}")
    found = re.search(rf"stopped on signal {signum} after step (\d+); resume with --resume auto "
                      r"\((\S+\.h5)\)", out)
    check(found, f"{name}: no line naming the signal and the checkpoint saved\n{out[-3000:]}")
    step, path = int(found.group(1)), found.group(2)
    check(step < STEPS, f"{name}: the signal landed after the last step ({step})")
    check(steps_done(path) == step, f"{name}: {path} holds step {steps_done(path)}, not {step}")
    return path, step


def resumed_from(name, out, path, step):
    """The resumed run names the checkpoint it resumed from and goes on after `step`, the step
    that file holds (read before the run: it may prune the file)."""
    check(f"resume: from {path}\n" in out,
          f"{name}: the run did not resume from {path}\n{out[-3000:]}")
    check(f"resume: npo at step {step} of {STEPS}\n" in out,
          f"{name}: the run did not go on after step {step}\n{out[-3000:]}")


def same_run(work, name, ref_rows, ref_final):
    """Bit-identical to the reference: every step's losses and every final tensor."""
    rows = metrics(work, name)
    check(len(rows) == STEPS, f"{name}: {len(rows)} steps logged, expected {STEPS}")
    for r, ref in zip(rows, ref_rows):
        for key in ("loss", "model_loss", "minus_noise_loss", "penalty", "grad_norm"):
            check(r[key] == ref[key], f"{name} step {r['step']} {key}: {r[key]!r} != {ref[key]!r}")
    tensors, attributes = final_checkpoint(work, name)
    ref_tensors, ref_attributes = ref_final
    check(tensors.keys() == ref_tensors.keys(), f"{name}: other tensors in the final checkpoint")
    for k, v in ref_tensors.items():
        check(np.array_equal(tensors[k], v), f"{name}: final {k} differs")
    check(attributes == ref_attributes, f"{name}: attributes {attributes} != {ref_attributes}")
    groups = sorted({k.split(".")[0] for k in tensors})
    print(f"{name}: {STEPS} losses and {len(tensors)} final tensors ({', '.join(groups)}) "
          "bit-identical to the uninterrupted run")


def close_run(work, name, ref_rows, ref_final, reference="the np 2 run"):
    """The same run up to fp32 rounding (another world size): every step's losses, every final
    tensor (relative L2 difference), the integer tensors and attributes exactly."""
    rows = metrics(work, name)
    check(len(rows) == STEPS, f"{name}: {len(rows)} steps logged, expected {STEPS}")
    worst_loss = 0.0
    for r, ref in zip(rows, ref_rows):
        for key in ("loss", "model_loss", "minus_noise_loss"):
            rel = abs(r[key] - ref[key]) / max(1e-12, abs(ref[key]))
            check(rel < LOSS_RTOL, f"{name} step {r['step']} {key}: {r[key]!r} vs {ref[key]!r} "
                  f"(relative {rel:.1e})")
            worst_loss = max(worst_loss, rel)
    tensors, attributes = final_checkpoint(work, name)
    ref_tensors, ref_attributes = ref_final
    check(tensors.keys() == ref_tensors.keys(), f"{name}: other tensors in the final checkpoint")
    worst = (0.0, "")
    for k, v in ref_tensors.items():
        got = tensors[k]
        check(got.shape == v.shape and got.dtype == v.dtype, f"{name}: final {k} is {got.shape} "
              f"{got.dtype}, not {v.shape} {v.dtype}")
        if v.dtype.kind != "f":
            check(np.array_equal(got, v), f"{name}: final {k} differs")
            continue
        scale = float(np.linalg.norm(v.astype(np.float64)))
        diff = float(np.linalg.norm((got.astype(np.float64) - v)))
        rel = diff / scale if scale > 0 else diff
        check(rel < TENSOR_RTOL, f"{name}: final {k} differs by {rel:.1e} (relative L2)")
        worst = max(worst, (rel, k))
    check(attributes == ref_attributes, f"{name}: attributes {attributes} != {ref_attributes}")
    print(f"{name}: {STEPS} steps' losses within {worst_loss:.1e} and {len(tensors)} final "
          f"tensors within {worst[0]:.1e} ({worst[1]}) of {reference}")


def main():
    work = tempfile.mkdtemp()
    try:
        write_pairs(f"{work}/pairs.jsonl")
        run(command(work, "reference", 2), "reference", 2)
        ref_rows = metrics(work, "reference")
        ref_final = final_checkpoint(work, "reference")
        ref_tensors = ref_final[0]
        check(len(ref_rows) == STEPS, f"reference: {len(ref_rows)} steps")
        check(any(k.startswith("noise_head.") for k in ref_tensors), "reference: no noise head")
        check(any(k.startswith("optimizer.exp_avg_sq.noise_head.") for k in ref_tensors),
              "reference: no optimizer state of the noise head")

        # --- SIGUSR1 to mpirun ---
        code, out = interrupt(work, "usr1", 4, lambda p: p.send_signal(signal.SIGUSR1))
        stop_ckpt, stopped_at = stopped("usr1", code, out, 10)
        shutil.copytree(f"{work}/runs/usr1", f"{work}/usr1_at_stop")
        out = run(command(work, "usr1", 2, "--resume", "auto"), "usr1 resume", 2)
        resumed_from("usr1", out, stop_ckpt, stopped_at)
        same_run(work, "usr1", ref_rows, ref_final)
        print(f"  (stopped after step {stopped_at}; resumed from {os.path.basename(stop_ckpt)})")

        # --- SIGTERM to the ranks ---
        def term_ranks(proc):
            for pid in mpi_jobs.rank_pids(proc.pid):
                os.kill(pid, signal.SIGTERM)
        code, out = interrupt(work, "term", 7, term_ranks)
        path, step = stopped("term", code, out, 15)
        out = run(command(work, "term", 2, "--resume", "auto"), "term resume", 2)
        resumed_from("term", out, path, step)
        same_run(work, "term", ref_rows, ref_final)

        # --- SIGKILL a few steps after a periodic checkpoint ---
        every = ("--set", "checkpoint.every_steps=4")

        def kill_ranks(proc):
            for pid in mpi_jobs.rank_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
        code, _ = interrupt(work, "kill9", 10, kill_ranks, *every)
        check(code != 0, "kill9: mpirun reported success after its ranks were killed")
        lost = steps_logged(work, "kill9")
        shutil.copytree(f"{work}/runs/kill9", f"{work}/kill9_at_kill")
        newest = open(f"{checkpoint_dir(work, 'kill9')}/latest").read().strip()
        path = f"{checkpoint_dir(work, 'kill9')}/{newest}.h5"
        step = steps_done(path)
        check(step % 4 == 0 and lost - 4 < step <= lost,
              f"kill9: the newest checkpoint holds step {step}; {lost} steps were logged")
        out = run(command(work, "kill9", 2, "--resume", "auto", *every), "kill9 resume", 2)
        resumed_from("kill9", out, path, step)
        same_run(work, "kill9", ref_rows, ref_final)
        print(f"  (killed after step {lost}; resumed from the newest periodic checkpoint, "
              f"{newest}.h5 at step {step})")

        # --- resharding: the np 2 checkpoint at np 1 and np 4 ---
        at_stop = stop_ckpt.replace(f"{work}/runs/usr1/", f"{work}/usr1_at_stop/")
        for np_ in (1, 4):
            name = f"reshard{np_}"
            # the steps before the checkpoint's, as the np 2 run logged them
            os.makedirs(f"{work}/runs/{name}")
            shutil.copy(f"{work}/usr1_at_stop/metrics.jsonl", f"{work}/runs/{name}/")
            out = run(command(work, name, np_, "--resume", at_stop), name, np_)
            resumed_from(name, out, at_stop, stopped_at)
            close_run(work, name, ref_rows, ref_final)

        # --- an np 1 run stopped by SIGUSR1, resumed at np 2 ---
        code, out = interrupt(work, "np1_to_np2", 4, lambda p: p.send_signal(signal.SIGUSR1),
                              np_=1)
        path, step = stopped("np1_to_np2", code, out, 10)
        out = run(command(work, "np1_to_np2", 2, "--resume", "auto"), "np1_to_np2 resume", 2)
        resumed_from("np1_to_np2", out, path, step)
        close_run(work, "np1_to_np2", ref_rows, ref_final)
        print(f"  (steps 1..{step} at np 1, {step + 1}..{STEPS} at np 2)")

        # --- a damaged newest checkpoint: auto-resume names it and takes the previous one ---
        shutil.copytree(f"{work}/kill9_at_kill", f"{work}/runs/damaged")
        damaged_dir = checkpoint_dir(work, "damaged")
        newest = open(f"{damaged_dir}/latest").read().strip()
        names = sorted(f[:-3] for f in os.listdir(damaged_dir) if f.endswith(".h5"))
        check(names[-1] == newest and len(names) >= 2, f"damaged: checkpoints {names}, latest "
              f"{newest}")
        previous = f"{damaged_dir}/{names[-2]}.h5"
        previous_step = steps_done(previous)
        with h5py.File(f"{damaged_dir}/{newest}.h5", "r") as f:
            offset = f["tensors"]["policy.model.norm.weight"].id.get_offset()
        with open(f"{damaged_dir}/{newest}.h5", "r+b") as f:
            f.seek(offset + 5)
            byte = f.read(1)
            f.seek(offset + 5)
            f.write(bytes([byte[0] ^ 0x40]))
        out = run(command(work, "damaged", 2, "--resume", "auto", *every), "damaged resume", 2)
        check(f"{newest}.h5" in out and "checksum" in out,
              f"damaged: the damaged checkpoint was not named:\n{out[-3000:]}")
        resumed_from("damaged", out, previous, previous_step)
        same_run(work, "damaged", ref_rows, ref_final)
        print(f"  ({newest}.h5 reported as damaged and skipped; resumed from {names[-2]}.h5)")
        print("exact_resume: OK")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
