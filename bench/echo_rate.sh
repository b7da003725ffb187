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
# cannot be aimed at a third party); this measures the echo path itself.
bg_ins "$BIN" server --listen 198.18.0.2:4000 --plain-echo-rate 1000000
bg_ins socat UDP-LISTEN:5000,fork,reuseaddr PIPE
sleep 1
printf '%-28s %8s %12s\n' server senders 'echoes/s'
for size in 64 1400; do
  u=$(inc "$LOAD" 198.18.0.2:4000 "$SENDERS" "$WINDOW" "$SECS" "$size")
  s=$(inc "$LOAD" 198.18.0.2:5000 "$SENDERS" "$WINDOW" "$SECS" "$size")
  python3 -c "import json,sys; u,s=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(f\"{'udpreach server ('+sys.argv[4]+' B)':28} {sys.argv[3]:>8} {u['pps']:12.0f}\"); print(f\"{'socat fork PIPE ('+sys.argv[4]+' B)':28} {sys.argv[3]:>8} {s['pps']:12.0f}\")" "$u" "$s" "$SENDERS" "$size"
done
