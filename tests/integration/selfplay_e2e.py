#!/usr/bin/python3
"""The self-play loop end to end on np 2, judged over HTTP by `dnpo_judge serve` on 127.0.0.1.

  reference  SFT -> SPIN iteration 0 -> DNPO iteration 1, uninterrupted:
             - both iterations report; iteration 0 labels as SPIN (no flips), iteration 1 as DSL
               with at least one flip, and the flips are exactly the pairs with s' - s >= threshold
               (recounted here from iter_1/samples.jsonl and pairs.jsonl);
             - nothing is judged twice: the server saw one request per distinct (prompt, answer)
               over the human answers and both iterations' generations;
             - metrics.jsonl has the SFT, SPIN and NPO steps and one report per iteration; the
               plots (accuracy, win/tie/loss, losses, reward, log-prob histograms) are drawn.
  compare    eval, `compare` and `generate` of the final model (np 1 and 2; greedy in fp32 and
             with sample.dtype = "bf16": at least 80% of the answers the same).
  per_layer  the same run generating with the policy gathered a layer at a time (lockstep
             decoding): the same answers and final model as the reference.
  kill_generate  SIGKILL to the ranks during iteration 1's generation (checkpoints every round);
             --resume auto ends with the reference's final model, byte for byte.
  kill_train     the same during iteration 1's NPO training.
  carry      npo.fresh_head_each_iteration = false over two DNPO iterations: differs from fresh
             heads, and a SIGKILL in iteration 2's generation resumes to the same final model.
  stop_judging   SIGUSR1 to mpirun while iteration 1's answers wait for a slow judge (sent once a
             few verdicts come in after the last round's generation): exit 0; the resumed run asks
             the judge for the rest, re-sends at most the requests that were in flight
             (judge.concurrency), never one whose verdict the checkpoint holds, and ends with the
             reference's model.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpi_jobs  # noqa: E402
from checks import check  # noqa: E402

BIN = os.environ["DNPO_BIN"]
SRC = os.environ["DNPO_SOURCE_DIR"]
TEMPLATE = f"{SRC}/configs/judge/default_0_100.txt"
PROMPTS = 160
ROUND = 32  # prompts per generation round on a rank
CONCURRENCY = 4
BOUND_S = 300 * mpi_jobs.TIME_SCALE  # generous functional bound on one run


def read_lines_csv(path):
    with open(path) as f:
        return [line for line in f if line.strip()]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def log_lines(path):
    """Lines in a file so far (0 before it exists)."""
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class Server:
    """`dnpo_judge serve` (the rule judge over HTTP) with a request log."""

    def __init__(self, work, name, *args):
        self.log = f"{work}/{name}.requests.jsonl"
        self.proc = subprocess.Popen(
            [f"{BIN}/dnpo_judge", "serve", "--port", "0", "--template", TEMPLATE,
             "--request-log", self.log, *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        check(line.strip().isdigit(), f"server printed no port: {line!r}")
        self.port = int(line)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=20)
        check(self.proc.returncode == 0, f"server exited {self.proc.returncode}")
        return read_jsonl(self.log) if os.path.exists(self.log) else []


def command(work, name, port, *extra):
    sets = [
        f'run.out_dir="{work}/runs"', f'run.name="{name}"', "run.log_every=1",
        f'data.train_file="{work}/data/train.jsonl"', f'data.eval_file="{work}/data/eval.jsonl"',
        "demo.train_size=1200", "demo.eval_size=40",
        "train.epochs=3", "train.batch_size=64", "train.micro_batch_size=16",
        f"selfplay.prompts={PROMPTS}", "selfplay.iterations=1", "selfplay.lr=1e-4",
        # rounds of 2 batches, so a row that ends takes the round's next prompt (continuous
        # batching) and a rank has 3 rounds to be stopped between
        "sample.batch_size=16", f"selfplay.round_prompts={ROUND}", "npo.chunk_positions=16",
        'judge.backend="http"', f'judge.base_url="http://127.0.0.1:{port}"',
        f'judge.template="{TEMPLATE}"', f"judge.concurrency={CONCURRENCY}",
        "judge.backoff_base_s=0.05", "judge.backoff_max_s=0.2",
        "checkpoint.every_minutes=0",
    ]
    return ["mpirun", "-np", "2", "--oversubscribe", f"{BIN}/dnpo_dist", "run",
            "--config", f"{SRC}/configs/demo.toml",
            *[a for s in sets for a in ("--set", s)], *extra]


def run(cmd, what):
    return mpi_jobs.run(cmd, what, BOUND_S)


def interrupt(cmd, what, triggers, action):
    """Runs cmd; once lines of its output have contained each of `triggers` in order, applies
    action(proc). Returns (exit code, output)."""
    proc = subprocess.Popen(cmd, env=mpi_jobs.environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    timer = threading.Timer(BOUND_S, proc.kill)
    timer.start()
    fired = False
    waiting = list(triggers)
    for line in proc.stdout:
        lines.append(line)
        if waiting and waiting[0] in line:
            waiting.pop(0)
            if not waiting:
                fired = True
                action(proc)
    proc.wait()
    timer.cancel()
    out = "".join(lines)
    check(fired, lambda: f"{what}: never saw {waiting[0]!r}\n{out[-4000:]}")
    return proc.returncode, out


def kill_ranks(proc):
    for pid in mpi_jobs.rank_pids(proc.pid):
        os.kill(pid, signal.SIGKILL)


def final_model(work, name):
    with open(f"{work}/runs/{name}/final/model.safetensors", "rb") as f:
        return f.read()


def reports(work, name):
    rows = read_jsonl(f"{work}/runs/{name}/selfplay.jsonl")
    check(rows[0]["stage"] == "model_0", rows[0])
    return rows[1:]


def same_result(work, name, ref_reports, ref_model):
    got = reports(work, name)
    check(len(got) == len(ref_reports), f"{name}: {len(got)} iteration reports")
    for r, ref in zip(got, ref_reports):
        for key in ("pairs", "generated_positive", "identical", "win", "tie", "loss_count",
                    "mean_score_generated", "model_loss_first", "model_loss_last"):
            check(r[key] == ref[key],
                  f"{name} iteration {r['iteration']} {key}: {r[key]} != {ref[key]}")
        check(r["eval"] == ref["eval"], f"{name} iteration {r['iteration']}: eval differs")
    check(final_model(work, name) == ref_model, f"{name}: final model differs from the reference")
    print(f"{name}: reports and final model identical to the uninterrupted run")


def check_reference(work, log):
    name = "reference"
    rows = reports(work, name)
    check([r["iteration"] for r in rows] == [0, 1], rows)
    it0, it1 = rows
    check(it0["labels"] == "spin" and it0["loss"] == "spin", it0)
    check(it1["labels"] == "dsl" and it1["loss"] == "npo", it1)
    check(it0["generated_positive"] == 0, it0)
    check(it1["generated_positive"] >= 1, f"no label flipped in iteration 1: {it1}")

    samples = read_jsonl(f"{work}/runs/{name}/iter_1/samples.jsonl")
    pairs = read_jsonl(f"{work}/runs/{name}/iter_1/pairs.jsonl")
    check(len(samples) == PROMPTS, f"{len(samples)} samples for {PROMPTS} prompts")
    different = [s for s in samples if s["generated"] != s["human"]]
    clears = [s for s in different
              if "score_generated" in s and "score_human" in s
              and s["score_generated"] - s["score_human"] >= 0.0]
    flipped_pairs = [p for p, s in zip(pairs, different) if p["chosen"] == s["generated"]]
    check(len(pairs) == len(different) == it1["pairs"],
          (len(pairs), len(different), it1["pairs"]))
    check(len(clears) == it1["generated_positive"] == len(flipped_pairs),
          (len(clears), it1["generated_positive"], len(flipped_pairs)))
    check(it1["identical"] == PROMPTS - len(different),
          f"{it1['identical']} identical answers reported, {PROMPTS - len(different)} counted")
    print(f"reference: iteration 1 flipped {len(clears)} of {len(pairs)} pairs, exactly those "
          f"with s' - s >= 0; {it1['identical']} identical answers skipped")

    # One request per distinct (prompt, answer) over the human answers and both iterations'
    # generations: an answer judged once (the human one, or an earlier iteration's) never again.
    distinct = set()
    for t in (0, 1):
        for s in read_jsonl(f"{work}/runs/{name}/iter_{t}/samples.jsonl"):
            distinct.add((s["prompt"], s["human"]))
            distinct.add((s["prompt"], s["generated"]))
    check(len(log) == len(distinct),
          f"the judge saw {len(log)} requests; {len(distinct)} distinct (prompt, answer) pairs")
    check(len({e["body"] for e in log}) == len(log), "a request body was sent twice")
    check(it0["judge_requests"] + it1["judge_requests"] == len(log), (it0, it1))
    check(it0["judge_requests"] + it0["judge_reused"] == 2 * PROMPTS, it0)
    check(it1["judge_requests"] + it1["judge_reused"] == PROMPTS, it1)
    print(f"reference: {len(log)} judge requests for {len(distinct)} distinct (prompt, answer) "
          f"pairs ({3 * PROMPTS} answers; reused {it0['judge_reused'] + it1['judge_reused']:.0f})")

    plots = f"{work}/runs/{name}/plots"
    for png in ("accuracy", "win_tie_loss", "losses", "reward", "logprobs_iter_0",
                "logprobs_iter_1"):
        check(os.path.getsize(f"{plots}/{png}.png") > 1000, f"plot {png}.png missing or empty")
        if png.startswith("logprobs"):
            check(len(read_lines_csv(f"{plots}/{png}.csv")) > 1, f"{png}.csv is empty")
    # The histograms share one lattice of half-nat bins (centres at k/2 + 1/4), so iterations
    # compare bin by bin; their counts are the answers written (pairs' two and the generated).
    for t in (0, 1):
        rows = read_lines_csv(f"{plots}/logprobs_iter_{t}.csv")[1:]
        centres = [float(r.split(",")[0]) for r in rows]
        check(all(abs((c - 0.25) / 0.5 - round((c - 0.25) / 0.5)) < 1e-9 for c in centres),
              f"logprobs_iter_{t}.csv: bin centres off the half-nat lattice: {centres[:5]}")
        check(centres == sorted(centres) and len(set(centres)) == len(centres), centres[:5])
        counts = [sum(int(x) for x in r.split(",")[1:]) for r in rows]
        check(sum(counts) > 0 and counts[-1] > 0, f"logprobs_iter_{t}.csv: no answers in it")
    metrics = read_jsonl(f"{work}/runs/{name}/metrics.jsonl")
    kinds = {(m["kind"], m["iteration"]) for m in metrics}
    for expected in [("sft", 0), ("spin", 0), ("npo", 1), ("selfplay", 0), ("selfplay", 1)]:
        check(expected in kinds, f"metrics.jsonl lacks {expected}: {sorted(kinds)}")


def check_compare(work):
    """eval --compare of the final model against model_0 equals win/tie/loss recounted from each
    model's own `eval --samples-out` (same draws, the rule judge's scores)."""
    runs = f"{work}/runs/reference"
    base = [f"{BIN}/dnpo_dist", "eval", "--config", f"{SRC}/configs/demo.toml",
            "--set", f'run.out_dir="{work}/compare"',
            "--set", f'data.eval_file="{work}/data/eval.jsonl"']
    run(base + ["--compare", f"{runs}/final", f"{runs}/sft"], "compare")
    got = json.load(open(f"{work}/compare/demo/compare.json"))
    scores = {}
    for name in ("final", "sft"):
        run(base + ["--model", f"{runs}/{name}", "--samples-out", f"{work}/{name}.jsonl"], name)
        scores[name] = [r["score_generated"] for r in read_jsonl(f"{work}/{name}.jsonl")]
    pairs = list(zip(scores["final"], scores["sft"]))
    expected = {"win": sum(a > b for a, b in pairs), "tie": sum(a == b for a, b in pairs),
                "loss": sum(a < b for a, b in pairs)}
    check(got["judged"] == len(pairs) == 40, got)
    for key, value in expected.items():
        check(got[key] == value, f"compare {key}: {got[key]} != {value} recounted")
    print(f"compare final vs model_0: win {got['win']} tie {got['tie']} loss {got['loss']} "
          "of 40, as recounted from the samples")

    # eval with the judge over HTTP: the rule judge behind it scores as the verifier does.
    server = Server(work, "eval")
    run(base + ["--model", f"{runs}/final", "--set", 'judge.backend="http"',
                "--set", f'judge.base_url="http://127.0.0.1:{server.port}"',
                "--set", f'judge.template="{TEMPLATE}"'], "eval with the http judge")
    server.stop()
    summary = json.load(open(f"{work}/compare/demo/eval.json"))
    check(summary["sampled_judged"] == 40, summary)
    check(abs(summary["sampled_judge_score"] - summary["sampled_score"]) < 1e-9, summary)
    print(f"eval over HTTP: judge score {summary['sampled_judge_score']:.2f} = verifier score")

    # generate: np 1 gives eval's samples exactly (same draws, same batches); np 2 every prompt,
    # in order, the answers equal up to float rounding in other batch shapes.
    gen = [f"{BIN}/dnpo_dist", "generate", "--config", f"{SRC}/configs/demo.toml",
           "--set", f'run.out_dir="{work}/compare"', "--model", f"{runs}/final",
           "--prompts", f"{work}/data/eval.jsonl"]
    run(gen + ["--out", f"{work}/gen1.jsonl"], "generate np 1")
    run(["mpirun", "-np", "2", "--oversubscribe"] + gen + ["--out", f"{work}/gen2.jsonl"],
        "generate np 2")
    sampled = [r["generated"] for r in read_jsonl(f"{work}/final.jsonl")]
    one = read_jsonl(f"{work}/gen1.jsonl")
    two = read_jsonl(f"{work}/gen2.jsonl")
    check([r["generated"] for r in one] == sampled, "generate at np 1 differs from eval's samples")
    check([r["id"] for r in two] == [r["id"] for r in one], "generate at np 2: other prompts")
    same = sum(a["generated"] == b["generated"] for a, b in zip(one, two)) / len(one)
    check(same >= 0.9, f"generate at np 2 agrees with np 1 on only {same:.2f} of the answers")
    print(f"generate: np 1 = eval's samples; np 2 agrees on {same:.2f} of the answers")

    # sample.dtype = "bf16": every prompt, and greedy answers mostly as in fp32 (the logits move
    # by about 1e-3; sampled answers diverge more, from the first token whose draw they move).
    greedy = {}
    for dtype, in_effect in (("fp32", "Float"), ("bf16", "BFloat16")):
        out = run(gen + ["--out", f"{work}/greedy_{dtype}.jsonl", "--set", "sample.temperature=0",
                         "--set", f'sample.dtype="{dtype}"'], f"generate greedy {dtype}")
        check(f"matrices in {in_effect}" in out, out[-2000:])  # the lm_head's dtype, as decoded
        greedy[dtype] = read_jsonl(f"{work}/greedy_{dtype}.jsonl")
    check([r["id"] for r in greedy["bf16"]] == [r["id"] for r in one], "bf16: other prompts")
    same = sum(a["generated"] == b["generated"]
               for a, b in zip(greedy["fp32"], greedy["bf16"])) / len(one)
    check(same >= 0.8, f"greedy bf16 agrees with fp32 on only {same:.2f} of the answers")
    print(f"generate in bf16: greedy answers agree with fp32 on {same:.2f}")


def main():
    work = tempfile.mkdtemp()
    server = Server(work, "reference")
    run(command(work, "reference", server.port), "reference")
    check_reference(work, server.stop())
    check_compare(work)
    ref_reports = reports(work, "reference")
    ref_model = final_model(work, "reference")
    every_round = ("--set", "checkpoint.every_steps=1")

    # --- generation with the policy gathered layer by layer ---
    server = Server(work, "per_layer")
    run(command(work, "per_layer", server.port, "--set", 'selfplay.generation="per_layer"'),
        "per_layer")
    server.stop()
    same_result(work, "per_layer", ref_reports, ref_model)

    # --- SIGKILL during iteration 1's generation, then --resume auto ---
    # (the reference's generation batches: other batch shapes round differently, and at T = 1 a
    # near tie can then sample another byte, as it did on an AMD EPYC with sample.batch_size=8)
    server = Server(work, "kill_generate")
    code, out = interrupt(command(work, "kill_generate", server.port, *every_round),
                          "kill_generate", ["in generate of iteration 1 after round 2"], kill_ranks)
    check(code != 0, "kill_generate: the job survived SIGKILL")
    out = run(command(work, "kill_generate", server.port, *every_round,
                      "--resume", "auto"), "kill_generate resume")
    check("resume: self-play iteration 1 in stage 'generate'" in out, out[-4000:])
    server.stop()
    same_result(work, "kill_generate", ref_reports, ref_model)

    # --- SIGKILL during iteration 1's NPO training ---
    server = Server(work, "kill_train")
    code, out = interrupt(command(work, "kill_train", server.port, *every_round),
                          "kill_train", ["train (npo)", "at step 2"], kill_ranks)
    check(code != 0, "kill_train: the job survived SIGKILL")
    out = run(command(work, "kill_train", server.port, *every_round, "--resume", "auto"),
              "kill_train resume")
    check("resume: self-play iteration 1 in stage 'npo'" in out, out[-4000:])
    server.stop()
    same_result(work, "kill_train", ref_reports, ref_model)

    # --- npo.fresh_head_each_iteration = false over two DNPO iterations: the head carried into
    # iteration 2 survives a SIGKILL in its generation (it is in the generation checkpoints) ---
    carry = ("--set", "selfplay.iterations=2", "--set", "npo.fresh_head_each_iteration=false")
    server = Server(work, "carry")
    run(command(work, "carry", server.port, *carry), "carry")
    run(command(work, "fresh2", server.port, "--set", "selfplay.iterations=2"), "fresh2")
    code, out = interrupt(command(work, "carry_killed", server.port, *carry, *every_round),
                          "carry_killed", ["in generate of iteration 2 after round 2"], kill_ranks)
    check(code != 0, "carry_killed: the job survived SIGKILL")
    out = run(command(work, "carry_killed", server.port, *carry, *every_round, "--resume", "auto"),
              "carry_killed resume")
    check("resume: self-play iteration 2 in stage 'generate'" in out, out[-4000:])
    server.stop()
    same_result(work, "carry_killed", reports(work, "carry"), final_model(work, "carry"))
    check(final_model(work, "carry") != final_model(work, "fresh2"),
          "carrying the noise head over changed nothing")
    print("carry: a carried-over noise head changes the run and survives a kill")

    # --- SIGUSR1 while iteration 1's answers wait for a slow judge ---
    slow = ("--latency-ms", "200")  # about 8 s of judging for iteration 1's answers
    server = Server(work, "stop_judging", *slow)

    def usr1_while_judging(proc):
        # Rank 0 has generated its last round; once a few more verdicts are in (held by the
        # checkpoint, so never re-sent), the judging is under way with more to come: about 150
        # answers at 20 a second (the resumed run's requests show that some were left).
        wanted = log_lines(server.log) + 3 * CONCURRENCY
        deadline = time.monotonic() + BOUND_S
        while log_lines(server.log) < wanted and proc.poll() is None:
            check(time.monotonic() < deadline, f"stop_judging: no verdicts in {BOUND_S} s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR1)
    rounds = -(-PROMPTS // 2 // ROUND)
    code, out = interrupt(command(work, "stop_judging", server.port), "stop_judging",
                          ["iteration 1: generating", f"generate {rounds}/{rounds}"],
                          usr1_while_judging)
    check(code == 0, f"stop_judging: exit {code}\n{out[-4000:]}")
    check("preemption: saved" in out and "in generate of iteration 1" in out, out[-4000:])
    before = {e["body"] for e in server.stop()}
    server = Server(work, "stop_judging_resumed", *slow)
    out = run(command(work, "stop_judging", server.port, "--resume", "auto"), "stop_judging resume")
    after = [e["body"] for e in server.stop()]
    check(after, "stop_judging: the resumed run asked the judge nothing: the stop came after the "
          "judging had ended")
    resent = before.intersection(after)
    check(len(resent) <= CONCURRENCY, f"{len(resent)} requests sent again after the resume "
          f"(at most {CONCURRENCY} were in flight)")
    check(len(after) < PROMPTS, f"the resumed run re-judged {len(after)} answers")
    same_result(work, "stop_judging", ref_reports, ref_model)
    print(f"stop_judging: {len(after)} requests after the resume, {len(resent)} of them re-sent "
          f"(<= {CONCURRENCY} in flight)")


if __name__ == "__main__":
    main()
