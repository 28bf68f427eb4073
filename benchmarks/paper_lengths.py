#!/usr/bin/python3
"""Preference pairs whose lengths are shaped like the paper's self-play data, and the padding
that micro-batching them costs.

The paper (SPIN's setting on UltraChat-200k, zephyr-7b) caps a sequence at 1024 tokens with at
most 512 of prompt, and samples at most 256 new tokens. Its data is not available here, so the
lengths are a stated assumption, in tokens, not a fit:
  prompt     log-normal, median 70, sigma 1.0, clipped to [8, 512]  (a line to a page)
  human      log-normal, median 260, sigma 0.6, clipped to [16, 1024 - prompt]  (the data's
             answer: often several hundred tokens)
  generated  log-normal, median 200, sigma 0.5, capped at 256 (max_new_tokens: about a third
             of the answers run into the cap)
In a SPIN iteration the human answer is chosen and the generated one rejected (with DSL either
may be); the padding does not depend on which is which.

  paper_lengths.py padding [--pairs N --batch B --micro 1,2,4,8 --seed S]
      the share of the processed tokens that is padding, per micro-batch size, for: "today"
      (a step's pairs in epoch order, chosen and rejected of a micro-batch padded to its longest
      sequence), "grouped" (a step's pairs sorted by length before they are split into
      micro-batches), "packed" (each pair's chosen and rejected in one row, grouped) and
      "pack_pairs" (dnpo's train.pack_pairs: micro-batches balanced in tokens, each packed into
      the fewest rows of at most 2 x 1024 tokens).
  paper_lengths.py generation --prompts N [--seed S]
      one JSON line per prompt, {prompt, answer}: the prompt's length and the length its
      generated answer will have (for dnpo_generate_bench --lengths, which makes each answer that
      long: continuous against static batching on answers that end at the paper's lengths).
  paper_lengths.py batching --prompts N --batch B [--round R --refill-rows K --seed S]
      what static batches spend on those prompts against what continuous batching at least
      needs: decode steps (static: each batch's longest answer; continuous: the answers' tokens
      over the rows) and prefill tokens (static: every prompt padded to its batch's longest);
      and, in rounds of R prompts (default 4 batches, as self-play's), the decode steps and
      prefill forwards of static batches and of continuous batching (free rows taking the
      round's next prompts once K are free, the round's last answers decoding in a shrinking
      batch). Where
      a forward costs about the same whatever its rows (a GPU's decode), forwards count cost.
  paper_lengths.py jsonl --pairs N --out FILE [--seed S]
      the pairs as JSONL ({id, prompt, chosen, rejected}) of words whose byte counts are those
      lengths (dnpo's byte tokenizer: a token per byte), for dnpo_dist train / the benchmarks.
"""
import argparse
import collections
import json
import math
import random
import sys

MAX_LENGTH = 1024
MAX_PROMPT = 512
MAX_NEW = 256


def lognormal(rng, median, sigma):
    return math.exp(math.log(median) + sigma * rng.gauss(0.0, 1.0))


def draw_pairs(n, seed):
    """[(prompt, human, generated)] token counts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = int(min(MAX_PROMPT, max(8, lognormal(rng, 70, 1.0))))
        human = int(min(MAX_LENGTH - prompt, max(16, lognormal(rng, 260, 0.6))))
        generated = int(min(MAX_NEW, max(1, lognormal(rng, 200, 0.5))))
        out.append((prompt, human, generated))
    return out


def balance(lengths, count):
    """dnpo's grouping (pair_batches.cpp): longest first (ties: lower index), each to the group
    with the fewest tokens so far (ties: the first group). Returns lists of item indices."""
    groups, load = [[] for _ in range(count)], [0] * count
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        g = min(range(count), key=lambda g: (load[g], g))
        groups[g].append(i)
        load[g] += lengths[i]
    return groups


def pack_rows(lengths, row_tokens):
    """dnpo's rows: the fewest (from total / row_tokens up) whose balanced loads fit."""
    count = max(1, math.ceil(sum(lengths) / row_tokens))
    while True:
        rows = balance(lengths, min(count, len(lengths)))
        if all(sum(lengths[i] for i in r) <= row_tokens for r in rows) or count >= len(lengths):
            return rows
        count += 1


def padding_dnpo(pairs, batch, micro, seed, row_tokens=2 * MAX_LENGTH):
    """train.pack_pairs: a step's pairs balanced into micro-batches, each packed into rows."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    pad = total = 0
    for begin in range(0, len(order), batch):
        step = order[begin:begin + batch]
        lengths = [2 * pairs[i][0] + pairs[i][1] + pairs[i][2] for i in step]
        for group in balance(lengths, math.ceil(len(step) / micro)):
            sizes = [sum(lengths[group[k]] for k in row)
                     for row in pack_rows([lengths[i] for i in group], row_tokens)]
            total += max(sizes) * len(sizes)
            pad += max(sizes) * len(sizes) - sum(sizes)
    return pad, total


def padding(pairs, batch, micro, scheme, seed):
    """(padding tokens, processed tokens) over an epoch of `pairs` in steps of `batch`."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    pad = total = 0
    for begin in range(0, len(order), batch):
        step = order[begin:begin + batch]
        if scheme != "today":
            key = (lambda i: sum(pairs[i][:2]) + pairs[i][2]) if scheme == "packed" else \
                (lambda i: pairs[i][0] + max(pairs[i][1], pairs[i][2]))
            step = sorted(step, key=key)
        for m in range(0, len(step), micro):
            ids = step[m:m + micro]
            if scheme == "packed":
                rows = [2 * pairs[i][0] + pairs[i][1] + pairs[i][2] for i in ids]
            else:
                rows = [pairs[i][0] + pairs[i][1] for i in ids] + \
                       [pairs[i][0] + pairs[i][2] for i in ids]
            width = max(rows)
            total += width * len(rows)
            pad += width * len(rows) - sum(rows)
    return pad, total


def continuous_batch(answers, batch, refill_rows=1):
    """(decode steps, prefill forwards) of one continuous batch over `answers` (lengths, in
    order), as dnpo runs it: a prompt's prefill picks its first token, so an answer of g tokens
    holds its row for g - 1 decode steps; once `refill_rows` rows are free (or as many as prompts
    wait) they take the next prompts in one prefill (another if a first token ends an answer);
    the batch ends with its last answer."""
    queue = collections.deque(answers)
    rows = []  # decode steps left per busy row
    steps = prefills = 0
    while True:
        while queue and batch - len(rows) >= min(refill_rows, len(queue), batch):
            prefills += 1
            for _ in range(min(batch - len(rows), len(queue))):
                g = queue.popleft()
                if g > 1:
                    rows.append(g - 1)
        if not rows:
            return steps, prefills
        step = min(rows)  # until the next row ends
        steps += step
        rows = [r - step for r in rows if r > step]


def static_batches(answers, batch):
    """(decode steps, prefill forwards) of static batches over `answers`: each batch prefills
    once and decodes until its longest answer ends."""
    batches = [answers[i:i + batch] for i in range(0, len(answers), batch)]
    return sum(max(b) - 1 for b in batches), len(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("padding")
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--micro", default="1,2,4,8,16")
    p.add_argument("--seed", type=int, default=1)
    g = sub.add_parser("generation")
    g.add_argument("--prompts", type=int, required=True)
    g.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("batching")
    b.add_argument("--prompts", type=int, required=True)
    b.add_argument("--batch", type=int, required=True)
    b.add_argument("--round", type=int, default=0, help="prompts per round (0: 4 batches)")
    b.add_argument("--refill-rows", type=int, default=1, help="sample.refill_rows")
    b.add_argument("--seed", type=int, default=1)
    j = sub.add_parser("jsonl")
    j.add_argument("--pairs", type=int, required=True)
    j.add_argument("--out", required=True)
    j.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.command == "generation":
        for prompt, _, generated in draw_pairs(args.prompts, args.seed):
            print(json.dumps({"prompt": prompt, "answer": generated}))
        return 0
    if args.command == "batching":
        lengths = [(p, g) for p, _, g in draw_pairs(args.prompts, args.seed)]
        batches = [lengths[i:i + args.batch] for i in range(0, len(lengths), args.batch)]
        static_steps = sum(max(g for _, g in batch) for batch in batches)
        static_prefill = sum(len(batch) * max(p for p, _ in batch) for batch in batches)
        answers = sum(g for _, g in lengths)
        prompts = sum(p for p, _ in lengths)
        round_prompts = args.round or 4 * args.batch
        rounds = [[g for _, g in lengths[i:i + round_prompts]]
                  for i in range(0, len(lengths), round_prompts)]
        cont = [continuous_batch(r, args.batch, args.refill_rows) for r in rounds]
        stat = [static_batches(r, args.batch) for r in rounds]
        print(json.dumps({"prompts": args.prompts, "batch": args.batch, "round": round_prompts,
                          "refill_rows": args.refill_rows,
                          "static_decode_steps": static_steps,
                          "continuous_decode_steps_at_least": math.ceil(answers / args.batch),
                          "in_rounds": {
                              "static_decode_steps": sum(s for s, _ in stat),
                              "static_prefills": sum(p for _, p in stat),
                              "continuous_decode_steps": sum(s for s, _ in cont),
                              "continuous_prefills": sum(p for _, p in cont)},
                          "static_row_steps": static_steps * args.batch, "answer_tokens": answers,
                          "static_prefill_tokens": static_prefill, "prompt_tokens": prompts}))
        return 0
    pairs = draw_pairs(args.pairs, args.seed)
    if args.command == "padding":
        for micro in (int(m) for m in args.micro.split(",")):
            row = {"pairs": args.pairs, "batch": args.batch, "micro": micro}
            for scheme in ("today", "grouped", "packed"):
                pad, total = padding(pairs, args.batch, micro, scheme, args.seed)
                row[scheme] = round(pad / total, 4)
            pad, total = padding_dnpo(pairs, args.batch, micro, args.seed)
            row["pack_pairs"] = round(pad / total, 4)
            print(json.dumps(row))
        return 0
    rng = random.Random(args.seed + 1)

    def text(n):
        words = []
        size = 0
        while size < n:
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
            words.append(w)
            size += len(w) + 1
        return " ".join(words)[:n]

    with open(args.out, "w") as f:
        for i, (prompt, human, generated) in enumerate(pairs):
            f.write(json.dumps({"id": str(i), "prompt": text(prompt), "chosen": text(human),
                                "rejected": text(generated)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
