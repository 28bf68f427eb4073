#!/usr/bin/env bash
# Integration: bad input gives a non-zero exit and a message naming the file and line.
set -euo pipefail
bin="${DNPO_BIN:?}/dnpo_dist"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

expect_failure() {  # expect_failure <pattern> <command...>
  local pattern="$1"; shift
  if "$@" >out.txt 2>&1; then
    echo "FAIL: '$*' exited 0"; cat out.txt; exit 1
  fi
  if ! grep -q -- "$pattern" out.txt; then
    echo "FAIL: '$*' did not print '$pattern':"; cat out.txt; exit 1
  fi
  echo "ok: $(grep -m1 -- "$pattern" out.txt)"
}

printf '[train]\nlr = 1e-3\nlrr = 2\n' > unknown_key.toml
expect_failure "unknown_key.toml:3:1: unknown config key 'train.lrr'" "$bin" sft --config unknown_key.toml

printf '[train]\nepochs = "three"\n' > wrong_type.toml
expect_failure "wrong_type.toml:2:.*train.epochs" "$bin" sft --config wrong_type.toml

printf '[loss]\nbeta = -1\n' > bad_value.toml
expect_failure "bad_value.toml:2:.*loss.beta" "$bin" sft --config bad_value.toml

expect_failure 'run.device = "cuda": this build has no CUDA' "$bin" sft --set run.device='"cuda"'
# The paper's configuration validates, and this CPU-only build says it cannot run it.
expect_failure 'run.device = "cuda": this build has no CUDA' "$bin" --config "${DNPO_SOURCE_DIR:?}/configs/zephyr-7b.toml"

expect_failure "no_such.toml" "$bin" sft --config no_such.toml
expect_failure "train.lrr" "$bin" sft --set train.lrr=1

printf '{"id":"a","prompt":"1+1=","answer":"2"}\n{"id":"b","prompt":"2+2=" "answer":"4"}\n' > broken.jsonl
expect_failure "broken.jsonl:2:" "$bin" sft --set data.train_file='"broken.jsonl"' --set run.out_dir='"runs"'

printf '{"id":"a","prompt":"1+1=","chosen":"2","rejected":"3"}\n{"id":"b","prompt":"2+2="}\n' > pairs.jsonl
expect_failure "pairs.jsonl:2:" "$bin" train --loss npo --pairs pairs.jsonl --set run.out_dir='"runs"'

expect_failure "missing.jsonl" "$bin" sft --set data.train_file='"missing.jsonl"' --set run.out_dir='"runs"'
echo "bad_input: OK"
