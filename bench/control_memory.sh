#!/usr/bin/env bash
# Server RSS and descriptors under the worst legal control-channel client:
# every session the server allows (from 4 source addresses, so the
# per-source shares add up to the global caps), each asking for every port
# it may have. Mode `all`: per source, its share of sessions minus one as
# udpreach sessions asking for every allowed port, plus one legacy (seed
# JSON) session. Mode `legacy`: per source, its whole share of sessions as
# legacy sessions (finding 2's attack, bounded). Reports idle (before),
# peak, and 5 s after the client closed everything, in the same run.
# Usage: bench/control_memory.sh [ALLOW_PORTS|default] [all|legacy]
source "$(dirname "$0")/lib.sh"
need python3
ALLOW=${1:-default}
[ "$ALLOW" = default ] && ALLOW=
MODE=${2:-all}
build_release
setup_pair
machine
for i in 2 3 4; do ip -n "$NSC" addr add "198.18.0.1$i/24" dev "uc$$"; done
args=(server --listen 198.18.0.2:4000)
[ -n "$ALLOW" ] && args+=(--allow-ports "$ALLOW")
ins "$BIN" "${args[@]}" > "/tmp/urb-srv-$$.log" 2>&1 &
SRV=$!; PIDS+=($SRV)
sleep 1
PID=$(ip netns pids "$NSS" | head -1)
line=$(head -1 "/tmp/urb-srv-$$.log"); echo "$line"
spec=$(echo "$line" | sed -n 's/.*test ports \([^;]*\);.*/\1/p')
per_source=$(echo "$line" | sed -n 's/.*sessions (\([0-9]*\) per source).*/\1/p')
if [ "$MODE" = legacy ]; then n_udpreach=0; n_legacy=$per_source; else n_udpreach=$((per_source - 1)); n_legacy=1; fi
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
fds() { ls "/proc/$PID/fd" | wc -l; }
echo "idle: rss $(rss) KiB, fds $(fds)"
peak_rss=0; peak_fds=0
coproc LOAD { inc python3 "$ROOT/bench/control_load.py" 198.18.0.2 4000 "$spec" "$n_udpreach" "$n_legacy" 198.18.0.1 198.18.0.12 198.18.0.13 198.18.0.14; }
read -r -t 300 result <&"${LOAD[0]}"
for _ in $(seq 20); do
  r=$(rss); f=$(fds)
  [ "$r" -gt "$peak_rss" ] && peak_rss=$r
  [ "$f" -gt "$peak_fds" ] && peak_fds=$f
  sleep 0.1
done
echo "client: $result"
echo "loaded: rss $peak_rss KiB, fds $peak_fds"
exec {LOAD[1]}>&-
wait "$LOAD_PID" 2>/dev/null || true
sleep 5
echo "5 s after the client closed: rss $(rss) KiB, fds $(fds)"
