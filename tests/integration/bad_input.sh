#!/usr/bin/env bash
# Integration: bad input gives a non-zero exit and a message naming the file, line or key, and
# nothing the user has is written over. Each case backs a row of docs/failures.md's table.
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

printf '[train]\nlr = = 1e-3\n' > malformed.toml
expect_failure "malformed.toml:2:.*invalid TOML" "$bin" sft --config malformed.toml

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
# A config error is the same on every rank: at np 4 rank 0 prints it once and the job ends
# without MPI_Abort; a usage error likewise.
expect_failure "micro_batch_size" mpirun -np 4 --oversubscribe "$bin" sft --set train.micro_batch_size=64
[ "$(grep -c "micro_batch_size" out.txt)" = 1 ] || { echo "FAIL: not printed once:"; cat out.txt; exit 1; }
! grep -q "MPI_ABORT\|aborting" out.txt || { echo "FAIL: the job was aborted:"; cat out.txt; exit 1; }
expect_failure "no_such_option" mpirun -np 4 --oversubscribe "$bin" sft --no_such_option
[ "$(grep -c "no_such_option" out.txt)" = 1 ] || { echo "FAIL: not printed once:"; cat out.txt; exit 1; }
# A data key the command needs, missing: known from the config alone, so reported once too.
expect_failure "train needs data.pairs_file" mpirun -np 4 --oversubscribe "$bin" train --loss spin \
  --set train.micro_batch_size=16
[ "$(grep -c "data.pairs_file" out.txt)" = 1 ] || { echo "FAIL: not printed once:"; cat out.txt; exit 1; }
! grep -q "MPI_ABORT\|aborting" out.txt || { echo "FAIL: the job was aborted:"; cat out.txt; exit 1; }
expect_failure "train.lrr" "$bin" sft --set train.lrr=1
[ ! -e checkpoints ] || { echo "FAIL: a config error left a run directory (checkpoints/)"; exit 1; }

printf '{"id":"a","prompt":"1+1=","answer":"2"}\n{"id":"b","prompt":"2+2=" "answer":"4"}\n' > broken.jsonl
expect_failure "broken.jsonl:2:" "$bin" sft --set data.train_file='"broken.jsonl"' --set run.out_dir='"runs"'

printf '{"id":"a","prompt":"1+1=","chosen":"2","rejected":"3"}\n{"id":"b","prompt":"2+2="}\n' > pairs.jsonl
expect_failure "pairs.jsonl:2:" "$bin" train --loss npo --pairs pairs.jsonl --set run.out_dir='"runs"'

expect_failure "cannot open JSONL file 'missing.jsonl'" "$bin" sft --set data.train_file='"missing.jsonl"' --set run.out_dir='"runs"'

# The whole job with its eval file missing: the demo world is not generated over the user's data.
mkdir -p mine
printf '{"id":"a","prompt":"1+1=","answer":"2"}\n' > mine/train.jsonl
before="$(sha256sum mine/train.jsonl)"
expect_failure "data.eval_file 'mine/eval.jsonl': no such file (the other data file exists" \
  "$bin" --set data.train_file='"mine/train.jsonl"' --set data.eval_file='"mine/eval.jsonl"' --set run.out_dir='"runs"'
[ "$(sha256sum mine/train.jsonl)" = "$before" ] || { echo "FAIL: mine/train.jsonl was written over"; exit 1; }
expect_failure "data.train_file 'corpus/chat.jsonl': no such file" \
  "$bin" --set data.train_file='"corpus/chat.jsonl"' --set data.eval_file='"corpus/held_out.jsonl"' --set run.out_dir='"runs"'
[ ! -e corpus ] || { echo "FAIL: the demo world was written into corpus/"; exit 1; }

# Every pair with identical answers: nothing to learn from.
printf '{"id":"a","prompt":"p","chosen":"x","rejected":"x"}\n' > same.jsonl
expect_failure "no usable pairs (1 given, 1 with identical chosen and rejected)" "$bin" train --loss npo --pairs same.jsonl --set run.out_dir='"runs"'

# A tokenizer with more ids than the model's vocabulary (the byte tokenizer has 259; below 256
# the config check refuses it first).
printf '{"id":"a","prompt":"1+1=","answer":"2"}\n{"id":"b","prompt":"2+2=","answer":"4"}\n' > ok.jsonl
expect_failure "tokenizer has 259 ids but model.vocab_size is 258" \
  "$bin" sft --set model.vocab_size=258 --set data.train_file='"ok.jsonl"' --set run.out_dir='"runs"'

# Resuming a checkpoint of another model: refused naming the file, the tensor and both shapes;
# the checkpoint is left as it was.
small=(--set data.train_file='"ok.jsonl"' --set run.out_dir='"runs"' --set run.name='"shape"'
       --set train.batch_size=2 --set train.micro_batch_size=2 --set train.max_steps=1 --set model.hidden_size=32
       --set model.intermediate_size=64 --set model.num_hidden_layers=1 --set model.num_attention_heads=2
       --set model.num_key_value_heads=2)
"$bin" sft "${small[@]}" >sft.txt 2>&1 || { cat sft.txt; exit 1; }
ckpt="$(ls runs/shape/checkpoints/*.h5 | tail -1)"
before="$(sha256sum "$ckpt")"
expect_failure "checkpoint $ckpt, tensor policy.model.*: shape mismatch: file has \[.*\], expected \[.*\]" \
  "$bin" sft "${small[@]}" --set model.intermediate_size=96 --resume auto
[ "$(sha256sum "$ckpt")" = "$before" ] || { echo "FAIL: $ckpt changed"; exit 1; }
# The disk is full at a checkpoint: checkpoint.dir on a 128 KB tmpfs (root only; elsewhere
# tests/mpi/ckpt covers it). The error names the checkpoint and the room; nothing is written
# (tests/mpi/ckpt: a previous checkpoint and `latest` are kept, and a disk that fills up during
# the write leaves no partial file).
mkdir -p full
if mount -t tmpfs -o size=128k tmpfs full 2>/dev/null; then
  trap 'umount "$work/full" 2>/dev/null || true; rm -rf "$work"' EXIT
  expect_failure "checkpoint full/ckpt-[0-9]*\.h5: the disk is full: full has .* nothing is written" \
    "$bin" sft "${small[@]}" --set run.name='"full"' --set checkpoint.dir='"full"'
  [ -z "$(ls -A full)" ] || { echo "FAIL: something was written"; ls -la full; exit 1; }
  umount full
else
  echo "skip: cannot mount a tmpfs here (not root); the disk-full case runs in tests/mpi/ckpt"
fi
echo "bad_input: OK"
