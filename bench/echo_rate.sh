#!/usr/bin/env bash
# Echo throughput (datagrams/s) of `udpreach server` vs socat as an echo server
# (what UDPping's README suggests), same link, same closed-loop load.
# Usage: bench/echo_rate.sh [SECONDS] [SENDERS]   (default 5 s, 4 senders)
source "$(dirname "$0")/lib.sh"
need socat python3
SECS=${1:-5}
SENDERS=${2:-4}
WINDOW=32
build_release
setup_pair
machine
LOAD=$ROOT/target/release/examples/echo_load
# Plain echo is rate-limited per source address by default (50/s, so the server
# cannot be aimed at a third party), and every reply draws on the
# per-destination budget (1000/s): both lifted, this measures the echo path
# itself. BEFORE=/path/to/an/older/udpreach adds its rows (same run, same load).
OPEN=(--plain-echo-rate 1000000 --reply-budget 10000000 --reply-budget-bytes 1000000000000)
bg_ins "$BIN" server --listen 198.18.0.2:4000 "${OPEN[@]}" >/dev/null
upid=${PIDS[-1]}
if [ -n "${BEFORE:-}" ]; then
  bg_ins "$BEFORE" server --listen 198.18.0.2:4100 "${OPEN[@]}" >/dev/null
  bpid=${PIDS[-1]}
fi
bg_ins socat UDP-LISTEN:5000,fork,reuseaddr PIPE
sleep 1
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %8s %12s %14s\n' server senders 'echoes/s' 'per CPU-s'
for size in 64 1400; do
  load() { inc "$LOAD" "$1" "$SENDERS" "$WINDOW" "$SECS" "$size"; }
  printf '%-28s %8s %s\n' "udpreach server ($size B)" "$SENDERS" "$(rate_per_cpu "$upid" "$SECS" load 198.18.0.2:4000)"
  if [ -n "${BEFORE:-}" ]; then
    printf '%-28s %8s %s\n' "  BEFORE ($size B)" "$SENDERS" "$(rate_per_cpu "$bpid" "$SECS" load 198.18.0.2:4100)"
  fi
  # socat forks a child per peer: its CPU is not one process's, so no per CPU-s.
  s=$(load 198.18.0.2:5000 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["pps"]))')
  printf '%-28s %8s %12s %14s\n' "socat fork PIPE ($size B)" "$SENDERS" "$s" -
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
