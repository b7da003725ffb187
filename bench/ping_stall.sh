#!/usr/bin/env bash
# Our own receive buffer must never show up as network loss: 20,000 pings
# at 10,000/s through the lab's link emulator (5 ms each way, no loss), the
# ping process stopped (SIGSTOP) for STALL_MS after one second, as a busy
# machine's scheduler may stop it. Replies that arrive meanwhile wait in the
# socket's receive buffer, which also holds the kernel's transmit
# timestamps; what overflows it the kernel drops (UdpRcvbufErrors).
# Usage: bench/ping_stall.sh [STALL_MS]   (BEFORE_BIN=PATH: that binary too, first)
source "$(dirname "$0")/lib.sh"
need python3 nstat
STALL_MS=${1:-150}
build_release
build_link
machine
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
here=$(cd "$(dirname "$0")" && pwd)
for bin in ${BEFORE_BIN:-} "$BIN"; do
  echo "udpreach: $bin"
  (export BIN=$bin STALL_MS; bash -c 'source "$1/lib.sh"
  setup_emulated delay=5ms delay=5ms
  bg_ins "$BIN" server --listen 198.18.0.2:4000 --reply-budget 100000 >/dev/null
  sleep 0.5
  inc nstat -n
  inc "$BIN" ping -i 100us -c 20000 -q --json 198.18.0.2 > /tmp/us.$$.json &
  P=$!
  sleep 1
  kill -STOP "$P"
  sleep "$(python3 -c "print($STALL_MS / 1000)")"
  kill -CONT "$P"
  wait "$P" || true
  errs=$(inc nstat -az UdpRcvbufErrors | awk "/UdpRcvbufErrors/ {print \$2}")
  stop_emulator
  python3 - /tmp/us.$$.json "$LINK_STATS" "$errs" <<PY
import json, sys, types
ns = lambda f: json.load(open(f), object_hook=lambda d: types.SimpleNamespace(**d))
s = ns(sys.argv[1]).summary; e = ns(sys.argv[2])
drops = sum(x.dropped_random + x.dropped_burst + x.dropped_queue + x.dropped_held for x in (e.a_to_b, e.b_to_a))
ld = getattr(s, "local_drops", "-")
print(f"    sent {s.transmitted}, received {s.received}, late {s.late}, lost {s.lost}, local_drops {ld} "
      f"(up {s.upstream_lost}, down {s.downstream_lost}, unknown {s.direction_unknown}); "
      f"emulator dropped {drops}; client UdpRcvbufErrors {sys.argv[3]}")
PY
  rm -f /tmp/us.$$.json' _ "$here")
done
