#!/usr/bin/env bash
# launch/run: retries a failed job with --resume auto, gives up after --retries, and passes a stop
# signal on as SIGUSR1 without retrying. dnpo_dist is replaced by a script that records how it
# was called (mpirun starts it like any program).
set -euo pipefail
src="${DNPO_SOURCE_DIR:?}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

# Fails (exit 3) while calls.txt has fewer than $FAKE_FAILURES lines; records its arguments.
cat > fake_dist <<'FAKE'
#!/usr/bin/env bash
echo "$*" >> calls.txt
if [[ "${FAKE_WAIT_FOR_USR1:-0}" == 1 ]]; then
  trap 'echo usr1 >> calls.txt; exit 0' USR1
  touch started
  for _ in $(seq 600); do sleep 0.1; done
  exit 4
fi
[[ $(wc -l < calls.txt) -gt ${FAKE_FAILURES:-0} ]] || exit 3
FAKE
chmod +x fake_dist
export DNPO_DIST="$work/fake_dist"
run=("$src/launch/run" --np 1 --launcher-args "--oversubscribe")

# Two failures, two retries: the third attempt succeeds; retries carry --resume auto.
FAKE_FAILURES=2 "${run[@]}" --retries 2 -- --config x.toml 2> log.txt || fail "exit $? with retries left"
[[ $(wc -l < calls.txt) -eq 3 ]] || fail "expected 3 attempts: $(cat calls.txt)"
[[ "$(sed -n 1p calls.txt)" == "--config x.toml" ]] || fail "first call: $(sed -n 1p calls.txt)"
[[ "$(sed -n 3p calls.txt)" == "--config x.toml --resume auto" ]] || fail "retry: $(sed -n 3p calls.txt)"
echo "ok: failed twice, resumed twice with --resume auto, exit 0"

# Out of retries: the job's exit status comes back.
rm calls.txt
status=0
FAKE_FAILURES=5 "${run[@]}" --retries 1 -- --config x.toml 2> log.txt || status=$?
[[ $status -ne 0 ]] || fail "exit 0 after every attempt failed"
[[ $(wc -l < calls.txt) -eq 2 ]] || fail "expected 2 attempts: $(cat calls.txt)"
grep -q "failed with exit .* after 2 attempt" log.txt || fail "no give-up message: $(cat log.txt)"
echo "ok: gave up after 1 retry with exit $status"

# A user-given --resume is not doubled.
rm calls.txt
FAKE_FAILURES=1 "${run[@]}" --retries 1 -- --resume auto 2> log.txt || fail "exit $?"
[[ "$(sed -n 2p calls.txt)" == "--resume auto" ]] || fail "retry: $(sed -n 2p calls.txt)"
echo "ok: a given --resume is kept as is"

# SIGTERM to launch/run reaches the job as SIGUSR1; the clean stop is not retried.
rm calls.txt
FAKE_WAIT_FOR_USR1=1 "${run[@]}" --retries 3 -- --config x.toml 2> log.txt &
wrapper=$!
for _ in $(seq 300); do [[ -e started ]] && break; sleep 0.1; done
[[ -e started ]] || fail "the job did not start"
kill -TERM "$wrapper"
status=0
wait "$wrapper" || status=$?
[[ $status -eq 0 ]] || fail "exit $status after a requested stop: $(cat log.txt)"
grep -qx usr1 calls.txt || fail "the job never got SIGUSR1: $(cat calls.txt)"
[[ $(grep -c -- "--config" calls.txt) -eq 1 ]] || fail "a stop was retried: $(cat calls.txt)"
echo "ok: SIGTERM became SIGUSR1, exit 0, no retry"
