#!/usr/bin/env bash
# `udpreach mtu` over loopback, repeated: every run must give the same answer
# (IPv4 65535, IPv6 65536: the largest datagram, loopback's MTU), in server
# mode and with --echo; then against a server that drops datagrams above
# 40000 bytes, where the search has to work through the largest sizes. Prints
# each distinct answer with how many runs gave it. Runs in a namespace of its
# own (its loopback only).
# Usage: bench/mtu_repeat.sh [RUNS]   (default 25 per case)
source "$(dirname "$0")/lib.sh"
need python3
RUNS=${1:-25}
build_release
setup_pair
machine
bg_ins "$BIN" server --listen 127.0.0.1:4000 --listen '[::1]:4000'
bg_ins "$BIN" server --listen 127.0.0.1:4001 --listen '[::1]:4001' --max-datagram 40000
sleep 1

answer() {
  python3 -c '
import json, sys
d = json.load(sys.stdin)
parts = []
for k in ("upstream", "downstream", "round_trip"):
    if d.get(k):
        x = d[k]
        ev = (x.get("evidence") or {}).get("kind")
        fr = x.get("fragments")
        fr = "-" if fr is None else ("pass" if fr["passes"] else "FAIL")
        parts.append("%s=%s/%s/frag %s" % (k, x["mtu"], ev, fr))
print(" ".join(parts))'
}

for target in 127.0.0.1:4000 '[::1]:4000' 127.0.0.1:4001 '[::1]:4001'; do
  for mode in server --echo; do
    [ "$mode" = server ] && m=() || m=(--echo)
    [ "${target##*:}" = 4001 ] && [ "$mode" = server ] && continue
    start=$(date +%s.%N)
    for _ in $(seq "$RUNS"); do
      out=$(ins "$BIN" mtu --json "${m[@]}" "$target") || true
      echo "$out" | answer
    done | sort | uniq -c | sed "s|^|$target $mode: |"
    echo "$target $mode: $RUNS runs in $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  done
done
