#!/usr/bin/env bash
# Several "hosts" on one machine: each a Linux network namespace with its own address, hostname
# and /etc/hosts, joined by a bridge in a namespace of its own, so that Open MPI and dnpo see a
# small cluster. Nothing outside the namespaces it creates is touched: the machine's interfaces,
# addresses, routes and /etc stay as they are, and all traffic stays between the namespaces.
# Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` (iproute2) and `unshare` (util-linux).
#
#   hosts.sh check                      exit 0 if namespaces can be made here, else 77 and why
#   hosts.sh up DIR N [SLOTS]           make hosts node0..node<N-1> (10.77.0.1..N/24 on their
#                                       interface mh0); write DIR/hostfile (SLOTS each, default
#                                       2), DIR/hosts, DIR/agent, DIR/bin/mpirun
#   hosts.sh exec DIR HOST CMD...       run CMD on HOST (its network, hostname and /etc/hosts)
#   hosts.sh down DIR                   kill every process on the hosts, delete the namespaces
#                                       (their interfaces go with them)
#   hosts.sh run N [--slots S] -- CMD...   up, CMD on node0 with DIR/bin first on PATH, down
#                                       (also on failure or a signal)
#
# DIR/agent is Open MPI's launch agent in place of ssh (`mpirun --mca plm_rsh_agent DIR/agent`):
# called as `agent HOST COMMAND...`, it runs the command line on HOST through a shell, as ssh
# does, so orted and the ranks under it live in HOST's namespace. DIR/bin/mpirun is mpirun with
# `--hostfile DIR/hostfile --mca plm_rsh_agent DIR/agent` added; run it on node0 (as a job's
# first node runs mpirun on a cluster): `hosts.sh exec DIR node0 DIR/bin/mpirun -np 4 ...`.
#
# Namespaces are named dnpo-mh-<owner pid>-<host> (the owner: the process that ran `up`, or
# $DNPO_HOSTS_OWNER); `up` first deletes those whose owner has died (a killed test).
# Env: DNPO_HOSTS_SUBNET (default 10.77.0: the hosts are .1 .. .N of it).
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
subnet="${DNPO_HOSTS_SUBNET:-10.77.0}"
interface=mh0

die() {
  echo "hosts.sh: $*" >&2
  exit 1
}

# Exits 77 (a skipped test) naming why no namespace can be made here.
check() {
  local missing
  [[ $(id -u) -eq 0 ]] || { echo "hosts.sh: needs root to make network namespaces"; exit 77; }
  for missing in ip unshare hostname mount; do
    command -v "$missing" >/dev/null || { echo "hosts.sh: no '$missing' on PATH"; exit 77; }
  done
  local probe="dnpo-mh-probe-$$" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    echo "hosts.sh: 'ip netns add' fails here: $err"
    exit 77
  fi
  if ! err=$(ip netns exec "$probe" unshare --uts --mount true 2>&1); then
    ip netns del "$probe" 2>/dev/null || true
    echo "hosts.sh: cannot enter a namespace with its own hostname: $err"
    exit 77
  fi
  ip netns del "$probe"
}

# The namespaces of an owner: its switch and hosts.
namespaces_of() {
  ip netns list | awk '{print $1}' | grep -E "^dnpo-mh-$1-" || true
}

# Kills every process in the namespaces of an owner, then deletes them.
remove_owner() {
  local ns pids
  for ns in $(namespaces_of "$1"); do
    for _ in $(seq 50); do
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [[ -z "$pids" ]] && break
      # shellcheck disable=SC2086  # one pid a word
      kill -9 $pids 2>/dev/null || true
      sleep 0.1
    done
    ip netns del "$ns" 2>/dev/null || echo "hosts.sh: could not delete namespace $ns" >&2
  done
}

# Deletes the namespaces left by owners that have died (a test killed before its clean-up).
sweep() {
  local owner
  for owner in $(ip netns list | sed -nE 's/^dnpo-mh-([0-9]+)-.*/\1/p' | sort -u); do
    kill -0 "$owner" 2>/dev/null || remove_owner "$owner"
  done
}

up() {
  local dir="$1" n="$2" slots="${3:-2}" owner="${DNPO_HOSTS_OWNER:-$PPID}" i
  [[ "$n" =~ ^[1-9][0-9]?$ && "$n" -le 250 ]] || die "up: the number of hosts must be 1..250"
  [[ "$slots" =~ ^[1-9][0-9]*$ ]] || die "up: slots must be a positive number, got '$slots'"
  local mpirun_bin
  mpirun_bin=$(command -v mpirun) || die "up: no mpirun on PATH"
  sweep
  local prefix="dnpo-mh-$owner"
  [[ -z "$(namespaces_of "$owner")" ]] || die "up: owner $owner already has hosts ($prefix-*)"
  mkdir -p "$dir/bin"
  dir="$(cd "$dir" && pwd)"
  echo "$prefix" > "$dir/prefix"
  # The switch: a bridge in its own namespace; each host's veth pair is made there with its
  # other end inside the host, so that no interface ever appears in the machine's namespace.
  ip netns add "$prefix-switch"
  ip -n "$prefix-switch" link add br0 type bridge
  ip -n "$prefix-switch" link set br0 up
  printf '127.0.0.1 localhost\n' > "$dir/hosts"
  : > "$dir/hostfile"
  for ((i = 0; i < n; i++)); do
    local ns="$prefix-node$i" address="$subnet.$((i + 1))"
    ip netns add "$ns"
    ip -n "$prefix-switch" link add "node$i" type veth peer name "$interface" netns "$ns"
    ip -n "$prefix-switch" link set "node$i" master br0 up
    ip -n "$ns" addr add "$address/24" dev "$interface"
    ip -n "$ns" link set "$interface" up
    ip -n "$ns" link set lo up
    printf '%s node%d\n' "$address" "$i" >> "$dir/hosts"
    printf 'node%d slots=%d\n' "$i" "$slots" >> "$dir/hostfile"
  done
  cat > "$dir/agent" <<EOF
#!/bin/sh
# Open MPI's launch agent for the hosts of $dir: agent HOST COMMAND...
exec "$self" agent "$dir" "\$@"
EOF
  # mpi_yield_when_idle: the hosts share this machine's cores, but each host's slots look free to
  # Open MPI, which then busy-polls; ranks spinning on shared cores slow collectives badly.
  cat > "$dir/bin/mpirun" <<EOF
#!/bin/sh
# mpirun over the hosts of $dir; run it on node0 (hosts.sh exec $dir node0 ...).
exec "$mpirun_bin" --hostfile "$dir/hostfile" --mca plm_rsh_agent "$dir/agent" \\
  --mca mpi_yield_when_idle 1 "\$@"
EOF
  chmod +x "$dir/agent" "$dir/bin/mpirun"
  echo "hosts.sh: $n hosts node0..node$((n - 1)) at $subnet.1..$n on $interface ($prefix-*)" >&2
}

# Runs a command on a host: its network namespace, a UTS namespace with the host's name, and a
# mount namespace in which the hosts' /etc/hosts is bound over the machine's.
on_host() {
  local dir="$1" host="$2"
  shift 2
  [[ -f "$dir/prefix" ]] || die "no hosts in $dir (run: hosts.sh up $dir N)"
  local ns
  ns="$(cat "$dir/prefix")-$host"
  ip netns list | awk '{print $1}' | grep -qx "$ns" || die "no host '$host' in $dir"
  # shellcheck disable=SC2016  # $1 and $2 are the inner shell's
  exec ip netns exec "$ns" unshare --uts --mount -- /bin/sh -c \
    'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' \
    sh "$host" "$dir/hosts" "$@"
}

down() {
  local dir="$1"
  [[ -f "$dir/prefix" ]] || return 0
  local prefix
  prefix="$(cat "$dir/prefix")"
  remove_owner "${prefix#dnpo-mh-}"
  rm -f "$dir/prefix"
}

run() {
  local n="$1" slots=2
  shift
  if [[ "${1:-}" == --slots ]]; then
    slots="$2"
    shift 2
  fi
  [[ "${1:-}" == -- ]] && shift
  [[ $# -gt 0 ]] || die "run: no command (hosts.sh run N [--slots S] -- CMD...)"
  local status=0
  run_dir="$(mktemp -d -t dnpo-hosts.XXXXXX)"
  export DNPO_HOSTS_OWNER=$$
  trap 'down "$run_dir"; rm -rf "$run_dir"' EXIT
  trap 'exit 130' INT TERM
  up "$run_dir" "$n" "$slots"
  export DNPO_HOSTS_DIR="$run_dir"
  # In the background, so that a signal to this script runs its traps at once.
  "$self" exec "$run_dir" node0 env PATH="$run_dir/bin:$PATH" "$@" &
  wait $! || status=$?
  return $status
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
  check) check ;;
  up) [[ $# -ge 2 ]] || die "usage: hosts.sh up DIR N [SLOTS]"; up "$@" ;;
  down) [[ $# -eq 1 ]] || die "usage: hosts.sh down DIR"; down "$1" ;;
  exec) [[ $# -ge 3 ]] || die "usage: hosts.sh exec DIR HOST CMD..."; on_host "$@" ;;
  # Open MPI's launch agent: the command comes as one shell line (as for ssh).
  agent)
    [[ $# -ge 3 ]] || die "usage: hosts.sh agent DIR HOST COMMAND..."
    dir="$1" host="$2"
    shift 2
    on_host "$dir" "$host" /bin/sh -c "$*"
    ;;
  run) [[ $# -ge 2 ]] || die "usage: hosts.sh run N [--slots S] -- CMD..."; run "$@" ;;
  -h|--help|"") sed -n '2,28p' "$self"; [[ -n "$command" ]] ;;
  *) die "unknown command '$command' (check, up, exec, down, run)" ;;
esac
