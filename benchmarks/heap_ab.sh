#!/usr/bin/env bash
# The heap's effect, side by side: the same SPIN/NPO steps (dnpo_step_bench --alternate 1) built
# with tcmalloc (build/, the default DNPO_HEAP) and with glibc (build-glibc/, DNPO_HEAP=glibc,
# whose programs fix glibc's mmap threshold at 4 MiB as dnpo_dist does), interleaved $reps times,
# then the np 4 FSDP memory bound (tests/mpi/fsdp_memory.py) with each. Prints each run's lines;
# RESULTS.md ("The heap") holds what it measured.
#
#   benchmarks/heap_ab.sh [reps] [step_bench shape flags...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/env.sh
source "$root/launch/env.sh"
reps="${1:-3}"
shift || true
shape=("$@")
[ ${#shape[@]} -gt 0 ] || shape=(--vocab 32000 --hidden 768 --layers 12 --batch 4 --prompt-len 32
  --response-len 32)
tc_bin="${DNPO_BUILD_DIR:-$root/build}/bin"
glibc_build="${DNPO_GLIBC_BUILD_DIR:-$root/build-glibc}"
if [ ! -f "$glibc_build/build.ninja" ]; then
  cmake -S "$root" -B "$glibc_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDNPO_HEAP=glibc \
    -DDNPO_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$glibc_build" --target dnpo_step_bench dnpo_fsdp_bench >/dev/null
cmake --build "$root/build" --target dnpo_step_bench dnpo_fsdp_bench >/dev/null

step() {  # $1 = bin dir
  "$1/dnpo_step_bench" "${shape[@]}" --steps 2 --alternate 1 2>/dev/null |
    grep -E '"(spin|npo)_step_time_median"' | sed 's/"config":{[^}]*},//'
}
for ((r = 1; r <= reps; r++)); do
  echo "== round $r: glibc"
  step "$glibc_build/bin"
  echo "== round $r: tcmalloc"
  step "$tc_bin"
done
for bin in "$glibc_build/bin" "$tc_bin"; do
  echo "== fsdp_memory with $bin"
  DNPO_BENCH_BIN="$bin" /usr/bin/python3 "$root/tests/mpi/fsdp_memory.py" || true
done
