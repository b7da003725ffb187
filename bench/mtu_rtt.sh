#!/usr/bin/env bash
# `udpreach mtu`: time to a result at a given RTT, through the lab's link
# emulator (crates/udpreach-lab-link) with jitter, across a PMTU black hole
# at 1400 bytes each way (unfragmented IPv4 packets above 1400 bytes vanish,
# no ICMP: the case where only round waits tell). RTT 0 = plain veth.
# Each run prints the median of RUNS runs per binary, in the same run:
#   BIN         this build (round waits from the measured RTT)
#   BEFORE_BIN  optional: a build of an earlier commit (e.g. the fixed
#               4 x RTT + 50 ms waits per round), for "before / after"
#
# Usage: bench/mtu_rtt.sh RTT_MS [JITTER_MS [RUNS]]
#   e.g. BIN=target/debug/udpreach LINK=target/debug/udpreach-lab-link \
#        BEFORE_BIN=/tmp/udpreach-before bench/mtu_rtt.sh 50 5 5
source "$(dirname "$0")/lib.sh"
need nft python3
RTT=${1:?RTT_MS}; JITTER=${2:-0}; RUNS=${3:-5}
if [ "$BIN" = "$ROOT/target/release/udpreach" ]; then
  (cd "$ROOT" && cargo build --release -q -p udpreach --bin udpreach)
fi
if [ "$RTT" = 0 ]; then
  setup_pair
else
  [ -x "$LINK" ] || build_link
  half=$(python3 -c "print($RTT / 2)")
  spec="delay=${half}ms,jitter=${JITTER}ms"
  setup_emulated "$spec" "$spec"
fi
machine
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
black_hole='table ip bench_mtu {
  chain prerouting {
    type filter hook prerouting priority -500; policy accept;
    ip length > 1400 ip frag-off & 0x3fff == 0 meta l4proto udp drop
  }
}'
echo "$black_hole" | inc nft -f -
echo "$black_hole" | ins nft -f -
bg_ins "$BIN" server --listen 198.18.0.2:4000
sleep 0.5

measure() {
  local label=$1 bin=$2
  local out
  out=$(mktemp -d)
  for i in $(seq "$RUNS"); do
    inc "$bin" mtu --json 198.18.0.2 > "$out/$i.json" || true
  done
  python3 - "$label" "$out" "$RTT" "$JITTER" <<'PY'
import json, statistics, sys
label, path, rtt, jitter = sys.argv[1:5]
import glob
docs = [json.load(open(f)) for f in sorted(glob.glob(f"{path}/*.json"))]
def med(k, d):
    return statistics.median(x[d][k] for x in docs)
total = statistics.median(x["elapsed_ms"] for x in docs)
right = sum(1 for x in docs if x["upstream"]["mtu"] == 1400 and x["downstream"]["mtu"] == 1400)
link = f"RTT {rtt} ms +-{jitter} ms" if rtt != "0" else "plain veth"
print(f"{label:<7} {link}: time to result {total:.0f} ms (median of {len(docs)}), "
      f"up {med('elapsed_ms', 'upstream'):.0f} ms / {med('rounds', 'upstream'):.0f} rounds, "
      f"down {med('elapsed_ms', 'downstream'):.0f} ms / {med('rounds', 'downstream'):.0f} rounds, "
      f"right {right}/{len(docs)}")
PY
  rm -rf "$out"
}

measure after "$BIN"
if [ -n "${BEFORE_BIN:-}" ]; then
  measure before "$BEFORE_BIN"
fi
[ "$RTT" = 0 ] || stop_emulator
