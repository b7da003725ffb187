#!/usr/bin/env bash
# RTT across the namespace veth link at 1 ms interval: udpreach ping vs irtt
# vs sockperf ping-pong, in the same run, on the same link. udpreach's own
# run gives two figures for the same replies: kernel-to-kernel (software
# transmit and receive timestamps, one clock, one layer) and user space (our
# send call to our read, wake-up included: the like-for-like with irtt and
# sockperf, which measure in user space).
# Usage: bench/ping_latency.sh [COUNT]   (default 3000 probes each)
source "$(dirname "$0")/lib.sh"
need irtt sockperf python3
COUNT=${1:-3000}
build_release
setup_pair
machine
bg_ins "$BIN" server --listen 198.18.0.2:4000
bg_ins irtt server -b 198.18.0.2:2112 -i 0 >/dev/null 2>&1
bg_ins sockperf server -i 198.18.0.2 -p 11111 >/dev/null 2>&1
sleep 1

ours=$(inc "$BIN" ping -c "$COUNT" -i 1ms -q --json-lines 198.18.0.2)
secs=$(python3 -c "print(max(1, round($COUNT/1000)))")
irtt_json=$(mktemp); inc irtt client -i 1ms -d "${secs}s" -Q -o - 198.18.0.2:2112 > "$irtt_json"
sp=$(inc sockperf ping-pong -i 198.18.0.2 -p 11111 -t "$secs" --mps=1000 2>&1)

python3 - "$ours" "$irtt_json" "$sp" <<'PY'
import json, re, sys, gzip
ours = json.loads(sys.argv[1])
raw = open(sys.argv[2], 'rb').read()
try:
    raw = gzip.decompress(raw)
except OSError:
    pass
irtt = json.loads(raw)
rtt = irtt["stats"]["rtt"]
rtts = sorted(rt["delay"]["rtt"] for rt in irtt.get("round_trips", []) if rt.get("delay", {}).get("rtt"))
irtt_p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] / 1000 if rtts else float("nan")
sp = sys.argv[3]
def sp_pct(p):
    m = re.search(r"percentile %s\s*=\s*([\d.]+)" % re.escape(p), sp)
    return float(m.group(1)) if m else float("nan")
kernel = ours["rtt"] if ours.get("rtt_clock") == "kernel" else None
rows = [
    ("udpreach ping, kernel tx->rx ts", kernel["p50_ms"] * 1000 if kernel else float("nan"),
     kernel["p99_ms"] * 1000 if kernel else float("nan"), ours["received"], ours["transmitted"]),
    ("udpreach ping, user space", ours["rtt_user"]["p50_ms"] * 1000, ours["rtt_user"]["p99_ms"] * 1000, ours["received"], ours["transmitted"]),
    ("irtt client -i 1ms", rtt["median"] / 1000, irtt_p99, irtt["stats"]["packets_received"], irtt["stats"]["packets_sent"]),
    # sockperf reports one-way latency = RTT/2; doubled here to compare RTTs.
    ("sockperf ping-pong (RTT=2x)", 2 * sp_pct("50.000"), 2 * sp_pct("99.000"), None, None),
]
print(f"udpreach rtt_clock: {ours.get('rtt_clock')}, send rate {ours.get('send_rate_pps', 0):.0f}/s")
print(f"{'tool':32} {'median RTT us':>14} {'p99 RTT us':>11} {'recv/sent':>12}")
for name, med, p99, r, s in rows:
    rs = f"{r}/{s}" if r is not None else "-"
    print(f"{name:32} {med:14.1f} {p99:11.1f} {rs:>12}")
PY
rm -f "$irtt_json"
