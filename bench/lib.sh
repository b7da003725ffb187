# Shared set-up for the benchmarks: a namespace pair joined by veth, torn
# down on exit. Addresses: client 198.18.0.1 / fd00::1, server 198.18.0.2 / fd00::2.
# Source it; then use `inc CMD...` (in client) and `ins CMD...` (in server).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/udpreach}
NSC=urb-c-$$
NSS=urb-s-$$
# Middle namespace of setup_emulated (the link emulator runs there).
NSM=urb-m-$$
LINK=${LINK:-$ROOT/target/release/udpreach-lab-link}
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # Forked children (socat fork) outlive their parent: kill all left in the namespaces.
  for ns in "$NSC" "$NSS" "$NSM"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  ip netns del "$NSC" 2>/dev/null || true
  ip netns del "$NSS" 2>/dev/null || true
  ip netns del "$NSM" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

need() { for c in "$@"; do command -v "$c" >/dev/null || { echo "bench: '$c' is missing (apt-get install it)" >&2; exit 2; }; done; }

setup_pair() {
  [ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 2; }
  ip netns add "$NSC"; ip netns add "$NSS"
  ip link add "uc$$" netns "$NSC" type veth peer name "us$$" netns "$NSS"
  for ns in "$NSC" "$NSS"; do
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  ip -n "$NSC" addr add 198.18.0.1/24 dev "uc$$"; ip -n "$NSC" addr add fd00::1/64 dev "uc$$" nodad
  ip -n "$NSS" addr add 198.18.0.2/24 dev "us$$"; ip -n "$NSS" addr add fd00::2/64 dev "us$$" nodad
  ip -n "$NSC" link set "uc$$" up; ip -n "$NSS" link set "us$$" up
}

inc() { ip netns exec "$NSC" "$@"; }
ins() { ip netns exec "$NSS" "$@"; }
bg_ins() { ip netns exec "$NSS" "$@" & PIDS+=($!); }

# NO_BUILD=1: use the binaries as they are (a script that runs others builds once).
build_release() {
  [ -n "${NO_BUILD:-}" ] && return 0
  (cd "$ROOT" && cargo build --release -q -p udpreach --bin udpreach --example echo_load)
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# PID SECONDS CMD...: runs a closed-loop load command (echo_load, printing
# JSON with "pps") and prints "replies/s replies-per-CPU-second-of-PID".
# The load shares this machine's cores with PID, so replies/s also measures
# how much CPU the load leaves over; per CPU-second of PID is its own cost.
rate_per_cpu() {
  local pid=$1 secs=$2 t0 r t1
  shift 2
  t0=$(cpu_ticks "$pid")
  r=$("$@" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["pps"]))')
  t1=$(cpu_ticks "$pid")
  python3 -c "import os; t=($t1-$t0)/os.sysconf('SC_CLK_TCK'); print('%12d %14d' % ($r, $r*$secs/t if t else 0))"
}

machine() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
}

# Like setup_pair (same addresses, one subnet), but with a middle namespace
# on the link where the link emulator (crates/udpreach-lab-link) relays every
# frame: setup_emulated UP_SPEC DOWN_SPEC, e.g.
#   setup_emulated delay=25ms,jitter=5ms,loss=2% delay=25ms,jitter=5ms,loss=2%
# (UP = client to server). Its counters (JSON) land in $LINK_STATS when
# stop_emulator runs.
setup_emulated() {
  [ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 2; }
  ip netns add "$NSC"; ip netns add "$NSS"; ip netns add "$NSM"
  ip netns exec "$NSM" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip link add "uc$$" netns "$NSC" type veth peer name "mc$$" netns "$NSM"
  ip link add "us$$" netns "$NSS" type veth peer name "ms$$" netns "$NSM"
  for ns in "$NSC" "$NSS"; do
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  ip -n "$NSC" addr add 198.18.0.1/24 dev "uc$$"; ip -n "$NSC" addr add fd00::1/64 dev "uc$$" nodad
  ip -n "$NSS" addr add 198.18.0.2/24 dev "us$$"; ip -n "$NSS" addr add fd00::2/64 dev "us$$" nodad
  ip -n "$NSM" link set "mc$$" up; ip -n "$NSM" link set "ms$$" up
  ip -n "$NSC" link set "uc$$" up; ip -n "$NSS" link set "us$$" up
  LINK_STATS=$(mktemp)
  ip netns exec "$NSM" "$LINK" --a "mc$$" --b "ms$$" --a-to-b "$1" --b-to-a "$2" > "$LINK_STATS" &
  LINK_PID=$!
  PIDS+=("$LINK_PID")
  sleep 0.3
}

# Stops the emulator; its counters are then in $LINK_STATS.
stop_emulator() {
  kill -INT "$LINK_PID" 2>/dev/null || true
  wait "$LINK_PID" 2>/dev/null || true
}

build_link() {
  [ -n "${NO_BUILD:-}" ] && return 0
  (cd "$ROOT" && cargo build --release -q -p udpreach-lab-link)
}
