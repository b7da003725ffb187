#!/usr/bin/env bash
# `udpreach nat`: time to a full result through a masquerading router whose
# conntrack UDP timers are 5 s (one exchange) and 12 s (stream), against a
# serial one-gap-at-a-time search (`--serial`, what a script would do) in
# the same run; then the engine's projection for Linux's default timers
# (30 s / 120 s), which would take minutes per run in the lab.
#
# client (198.18.1.1) -- router (masquerade; 5 s / 12 s) -- server (198.18.2.2, alt 198.18.2.3)
#
# Usage: bench/nat.sh        (BIN=path/to/udpreach to choose the binary)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/debug/udpreach}
C=urn-c-$$; R=urn-r-$$; S=urn-s-$$
SERVER_PID=

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  for ns in "$C" "$R" "$S"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in "$C" "$R" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 2; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build -q -p udpreach --bin udpreach)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"

for ns in "$C" "$R" "$S"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
ip link add c-r netns "$C" type veth peer name r-c netns "$R"
ip link add r-s netns "$R" type veth peer name s-r netns "$S"
ip -n "$C" addr add 198.18.1.1/24 dev c-r
ip -n "$R" addr add 198.18.1.254/24 dev r-c
ip -n "$R" addr add 198.18.2.254/24 dev r-s
ip -n "$S" addr add 198.18.2.2/24 dev s-r
ip -n "$S" addr add 198.18.2.3/24 dev s-r
for x in "$C c-r" "$R r-c" "$R r-s" "$S s-r"; do set -- $x; ip -n "$1" link set "$2" up; done
ip -n "$C" route add default via 198.18.1.254
ip -n "$S" route add default via 198.18.2.254
ip netns exec "$R" nft -f - <<'NFT'
table inet labnat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "r-s" masquerade; }
}
NFT
ip netns exec "$R" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=5 net.netfilter.nf_conntrack_udp_timeout_stream=12
ip netns exec "$S" "$BIN" server --listen 198.18.2.2:4000 --alt-address 198.18.2.3 > /dev/null 2>&1 & SERVER_PID=$!
sleep 1

run() {
  local label=$1; shift
  local t0 t1
  t0=$(date +%s%N)
  ip netns exec "$C" "$BIN" nat 198.18.2.2:4000 --max-idle 60s "$@" > /tmp/urn-out-$$ || true
  t1=$(date +%s%N)
  echo "== $label: $(( (t1 - t0) / 1000000 )) ms wall"
  cat /tmp/urn-out-$$
  rm -f /tmp/urn-out-$$
}
run "udpreach nat (parallel search)"
run "udpreach nat --serial (one gap at a time)" --serial
echo "== projection (engine, virtual time, --max-idle 300s, 20 ms each way)"
(cd "$ROOT" && cargo run -q -p udpreach-engine --features testkit --example nat_projection)
