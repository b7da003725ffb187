#!/usr/bin/env bash
# `udpreach mtu`: time to a result across a router whose link to the server
# has MTU 1400, with the router's frag-needed / packet-too-big errors, and
# with them dropped (a PMTU black hole); IPv4 and IPv6. tracepath (iputils)
# on the same path for comparison where it finishes.
#
# client (198.18.1.1, fd00:1::1) -- router -- (MTU 1400) -- server (198.18.2.2, fd00:2::2)
#
# Usage: bench/mtu.sh [RUNS]   (default 10 runs per case; the median is shown)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/udpreach}
RUNS=${1:-10}
C=urm-c-$$; R=urm-r-$$; S=urm-s-$$
SERVER_PID=

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  for ns in "$C" "$R" "$S"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in "$C" "$R" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "${SUMMARY:-}"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q -p udpreach --bin udpreach)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"

for ns in "$C" "$R" "$S"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
    net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0
done
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
ip link add c-r netns "$C" type veth peer name r-c netns "$R"
ip link add r-s netns "$R" type veth peer name s-r netns "$S"
ip -n "$C" addr add 198.18.1.1/24 dev c-r;    ip -n "$C" addr add fd00:1::1/64 dev c-r nodad
ip -n "$R" addr add 198.18.1.254/24 dev r-c;  ip -n "$R" addr add fd00:1::fe/64 dev r-c nodad
ip -n "$R" addr add 198.18.2.254/24 dev r-s;  ip -n "$R" addr add fd00:2::fe/64 dev r-s nodad
ip -n "$S" addr add 198.18.2.2/24 dev s-r;    ip -n "$S" addr add fd00:2::2/64 dev s-r nodad
for x in "$C c-r" "$R r-c" "$R r-s" "$S s-r"; do set -- $x; ip -n "$1" link set "$2" up; done
ip -n "$C" route add default via 198.18.1.254; ip -n "$C" -6 route add default via fd00:1::fe
ip -n "$S" route add default via 198.18.2.254; ip -n "$S" -6 route add default via fd00:2::fe
ip -n "$R" link set r-s mtu 1400; ip -n "$S" link set s-r mtu 1400
SUMMARY=$(mktemp)
cat > "$SUMMARY" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
def one(x):
    f = x.get("fragments") or {}
    frag = "pass" if f.get("passes") else "DROPPED"
    return (f"{x['mtu']} ({x['evidence']['kind']}, {x['rounds']} rounds, "
            f"{x['elapsed_ms']:.0f} ms, fragments {frag})")
print(f"up {one(d['upstream'])}; down {one(d['downstream'])}")
PY
sleep 2
ip netns exec "$S" "$BIN" server > /dev/null 2>&1 & SERVER_PID=$!
sleep 0.5

# Forget what the kernels learned (cached path MTUs) so every run starts cold.
flush() { for ns in "$C" "$S"; do ip -n "$ns" route flush cache 2>/dev/null || true; ip -n "$ns" -6 route flush cache 2>/dev/null || true; done; }

measure() {
  local label=$1 target=$2
  local times=() results=""
  for _ in $(seq "$RUNS"); do
    flush
    local t0 t1
    t0=$(date +%s%N)
    local json
    json=$(ip netns exec "$C" "$BIN" mtu --json "$target")
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000000 )))
    results=$(python3 "$SUMMARY" "$json")
  done
  local sorted median
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-30s median %5d ms (min %d, max %d) over %d runs: %s\n' "$label" "$median" \
    "$(echo "$sorted" | head -1)" "$(echo "$sorted" | tail -1)" "$RUNS" "$results"
}

tracepath_time() {
  local label=$1; shift
  flush
  local t0 t1 last
  t0=$(date +%s%N)
  last=$(ip netns exec "$C" timeout 60 tracepath -n "$@" 2>&1 | grep -E 'pmtu|Resume|Too many|no reply' | tail -1 || true)
  [ -n "$last" ] || last="no result within 60 s"
  t1=$(date +%s%N)
  printf '  %-30s %5d ms: %s\n' "$label" $(( (t1 - t0) / 1000000 )) "$last"
}

echo "udpreach mtu (whole command: both directions, then fragments both ways)"
measure "IPv4, router ICMP" 198.18.2.2
measure "IPv6, router ICMP" "[fd00:2::2]"
ip netns exec "$R" nft -f - <<'EOF'
table inet bench {
  chain output { type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed drop
    icmpv6 type packet-too-big drop
  }
}
EOF
measure "IPv4, black hole" 198.18.2.2
measure "IPv6, black hole" "[fd00:2::2]"
if command -v tracepath >/dev/null; then
  echo "tracepath -n (one direction, up to 60 s), black hole"
  tracepath_time "IPv4, black hole" 198.18.2.2
  tracepath_time "IPv6, black hole" fd00:2::2
fi
ip netns exec "$R" nft flush ruleset

if command -v tracepath >/dev/null; then
  echo "tracepath -n (one direction), router ICMP"
  tracepath_time "IPv4, router ICMP" 198.18.2.2
  tracepath_time "IPv6, router ICMP" fd00:2::2
fi
