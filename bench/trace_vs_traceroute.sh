#!/usr/bin/env bash
# `udpreach trace` against Debian's `traceroute -U -p PORT` through a chain of
# two routers (client - r1 - r2 - server), in the same run: time to a verdict
# for 1 port and for 100 ports, and whether each tool's output identifies the
# dropping hop (r2, 198.18.4.2 seen from the client).
#
# r2 drops UDP to ports 6000-6049 in its forward chain; 6050-6099 pass. The
# server runs `udpreach server`. traceroute runs with its defaults (3 probes
# per hop, 5 s wait, 16 probes at once, max 30 hops), one process per port,
# all ports in parallel. udpreach: one `trace` run for all ports, defaults
# (2 attempts, adaptive wait, max 30 hops), and once with --rate 10000.
#
#  (a) ICMP rate limiting off on the routers and the server.
#  (b) the kernel's defaults: icmp_ratelimit=1000 (one error a second per
#      peer after a burst), icmp_msgs_per_sec=1000, icmp_msgs_burst=50.
#
# "identified" = the tool's output names 198.18.4.2 as the last hop that
# answered for the port (traceroute: last hop with an address, destination
# not reached; udpreach: verdict dropped_after with last_hop 198.18.4.2 and
# no "ambiguous"), and for passing ports: the port reached the server.
# Usage: bench/trace_vs_traceroute.sh [a|b|both]   (default: both)
#   NO_BUILD=1 BIN=target/debug/udpreach uses a binary already built.
source "$(dirname "$0")/lib.sh"
need traceroute nft python3
WHICH=${1:-both}
[ -n "${NO_BUILD:-}" ] || build_release
machine
echo "traceroute: $(traceroute --version 2>&1 | head -1)"

C=urb-tc-$$; R1=urb-tr1-$$; R2=urb-tr2-$$; S=urb-ts-$$
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for ns in "$C" "$R1" "$R2" "$S"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in "$C" "$R1" "$R2" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  [ -z "${out:-}" ] || rm -rf "$out"
}
trap cleanup EXIT INT TERM
for ns in "$C" "$R1" "$R2" "$S"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.accept_dad=0
done
link() { # ns1 if1 addr1 ns2 if2 addr2
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
}
link "$C" c-r1 198.18.3.1/24 "$R1" r1-c 198.18.3.254/24
link "$R1" r1-r2 198.18.4.1/24 "$R2" r2-r1 198.18.4.2/24
link "$R2" r2-s 198.18.5.254/24 "$S" s-r2 198.18.5.2/24
ip -n "$C" route add default via 198.18.3.254
ip -n "$S" route add default via 198.18.5.254
ip -n "$R1" route add 198.18.5.0/24 via 198.18.4.2
ip -n "$R2" route add 198.18.3.0/24 via 198.18.4.1
ip netns exec "$R2" nft -f - <<'EOF'
table inet bench {
  chain f { type filter hook forward priority 0; udp dport 6000-6049 drop; }
}
EOF
ip netns exec "$S" "$BIN" server --listen 198.18.5.2:4000 > /dev/null 2>&1 &
PIDS+=($!)
sleep 1
out=$(mktemp -d)

ratelimit() { # on|off
  for ns in "$R1" "$R2" "$S"; do
    if [ "$1" = off ]; then
      ip netns exec "$ns" sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_msgs_per_sec=1000000 net.ipv4.icmp_msgs_burst=1000000
    else
      ip netns exec "$ns" sysctl -qw net.ipv4.icmp_ratelimit=1000 net.ipv4.icmp_ratemask=6168 net.ipv4.icmp_msgs_per_sec=1000 net.ipv4.icmp_msgs_burst=50
    fi
  done
}

load() { cut -d' ' -f1 /proc/loadavg; }

judge_traceroute() { # files...
  python3 - "$@" <<'PY'
import re, sys
ok = 0
for f in sys.argv[1:]:
    port = int(re.search(r"-(\d+)\.txt$", f).group(1))
    hops = []
    for line in open(f).read().splitlines()[1:]:
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if not m: continue
        addr = re.search(r"(\d+\.\d+\.\d+\.\d+)", m.group(2))
        hops.append(addr.group(1) if addr else None)
    answered = [h for h in hops if h]
    reached = "198.18.5.2" in answered
    last = answered[-1] if answered else None
    if port < 6050: ok += (not reached and last == "198.18.4.2")
    else: ok += reached
print(ok)
PY
}

judge_udpreach() { # json
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ok = 0
for p in d["ports"]:
    up = [r for r in d["results"] if r["port"] == p and r["direction"] == "upstream" and not r["control"]][0]
    if p < 6050:
        ok += (up["verdict"] == "dropped_after" and (up["last_hop"] or {}).get("address") == "198.18.4.2" and up["ambiguous"] is None)
    else:
        ok += up["verdict"] == "passes"
print(ok)
PY
}

scenario() { # name ports...
  local name=$1 spec=$2; shift 2
  local ports=("$@") n=$#
  sleep 3
  local t0 t1
  t0=$(date +%s.%N)
  for p in "${ports[@]}"; do
    ip netns exec "$C" traceroute -n -U -p "$p" 198.18.5.2 > "$out/$name-$spec-tr-$p.txt" 2>&1 &
  done
  wait $(jobs -p | grep -v -x -F "$(printf '%s\n' "${PIDS[@]}")") 2>/dev/null || true
  t1=$(date +%s.%N)
  local tr_ok; tr_ok=$(judge_traceroute "$out/$name-$spec"-tr-*.txt)
  printf '%-4s %5d ports  %-32s %8.2f s  %3d/%d right  (load %s)\n' "$name" "$n" "traceroute -U -p (parallel)" "$(awk "BEGIN{print $t1 - $t0}")" "$tr_ok" "$n" "$(load)"
  for extra in "" "--rate 10000"; do
    sleep 3
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    ip netns exec "$C" "$BIN" trace 198.18.5.2 -p "$spec" --json $extra > "$out/$name-ur.json" || true
    t1=$(date +%s.%N)
    printf '%-4s %5d ports  %-32s %8.2f s  %3d/%d right  (load %s)\n' "$name" "$n" "udpreach trace ${extra:-(defaults)}" "$(awk "BEGIN{print $t1 - $t0}")" "$(judge_udpreach "$out/$name-ur.json")" "$n" "$(load)"
  done
}

run_set() { # label
  scenario "$1" 6000 6000
  scenario "$1" 6060 6060
  scenario "$1" 6000-6099 $(seq 6000 6099)
}

if [ "$WHICH" = a ] || [ "$WHICH" = both ]; then ratelimit off; run_set a; fi
if [ "$WHICH" = b ] || [ "$WHICH" = both ]; then ratelimit on; run_set b; fi
