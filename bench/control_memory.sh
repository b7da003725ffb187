#!/usr/bin/env bash
# Server RSS and descriptors under the worst legal control-channel client:
# every session the server allows (from 4 source addresses, so the
# per-source shares add up to the global caps), each asking for every port
# it may have. Mode `all`: per source, its share of sessions minus one as
# udpreach sessions asking for every allowed port, plus one legacy (seed
# JSON) session. Mode `legacy`: per source, its whole share of sessions as
# legacy sessions, each asking for its own slice of the ports (finding 2's
# attack). Reports idle, peak, and 5 s after the client closed everything.
# With BEFORE=/path/to/an/older/udpreach, the same load runs against that
# binary too, in the same run (a server without per-source shares is
# loaded with 16 sessions per source).
# Usage: [BEFORE=...] bench/control_memory.sh [ALLOW_PORTS|default] [all|legacy]...
source "$(dirname "$0")/lib.sh"
need python3
ALLOW=${1:-default}
[ "$ALLOW" = default ] && ALLOW=
shift || true
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(all legacy)
build_release
setup_pair
machine
for i in 2 3 4; do ip -n "$NSC" addr add "198.18.0.1$i/24" dev "uc$$"; done

run_case() {
  local bin=$1 label=$2 mode=$3
  local args=(server --listen 198.18.0.2:4000)
  [ -n "$ALLOW" ] && args+=(--allow-ports "$ALLOW")
  local log="/tmp/urb-srv-$$.log"
  ins "$bin" "${args[@]}" > "$log" 2>&1 &
  local srv=$!
  sleep 1
  local pid; pid=$(ip netns pids "$NSS" | head -1)
  local line; line=$(head -1 "$log")
  local spec per_source n_udpreach n_legacy
  spec=$(echo "$line" | sed -n 's/.*test ports \([^;]*\);.*/\1/p')
  per_source=$(echo "$line" | sed -n 's/.*sessions (\([0-9]*\) per source).*/\1/p')
  per_source=${per_source:-16}
  if [ "$mode" = legacy ]; then n_udpreach=0; n_legacy=$per_source; else n_udpreach=$((per_source - 1)); n_legacy=1; fi
  rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
  fds() { ls "/proc/$pid/fd" | wc -l; }
  local idle_rss idle_fds peak_rss=0 peak_fds=0 result
  idle_rss=$(rss); idle_fds=$(fds)
  coproc LOAD { inc python3 "$ROOT/bench/control_load.py" 198.18.0.2 4000 "$spec" "$n_udpreach" "$n_legacy" 198.18.0.1 198.18.0.12 198.18.0.13 198.18.0.14; }
  local load_pid=$LOAD_PID
  read -r -t 300 result <&"${LOAD[0]}" || result='{}'
  for _ in $(seq 20); do
    r=$(rss); f=$(fds)
    [ "$r" -gt "$peak_rss" ] && peak_rss=$r
    [ "$f" -gt "$peak_fds" ] && peak_fds=$f
    sleep 0.1
  done
  exec {LOAD[1]}>&-
  wait "$load_pid" 2>/dev/null || true
  sleep 5
  printf '%-8s %-6s idle %6s KiB %5s fds | loaded %7s KiB %6s fds | 5 s after close %7s KiB %5s fds | %s\n' \
    "$label" "$mode" "$idle_rss" "$idle_fds" "$peak_rss" "$peak_fds" "$(rss)" "$(fds)" "$result"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true
  for p in $(ip netns pids "$NSS"); do kill "$p" 2>/dev/null || true; done
  sleep 0.5
}

echo "$("$BIN" --version 2>/dev/null || true)"
for mode in "${MODES[@]}"; do
  run_case "$BIN" after "$mode"
  [ -n "${BEFORE:-}" ] && run_case "$BEFORE" before "$mode"
done
