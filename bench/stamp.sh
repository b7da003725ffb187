#!/usr/bin/env bash
# STAMP (issue 14), same link, same run:
#  1. reflector rate (replies/s): `udpreach server --stamp` vs `stamp-suite -i`,
#     stateless and stateful, under the same closed-loop load (echo_load: SENDERS
#     threads, 32 packets in flight each, 44-byte open-mode packets);
#  2. sender RTT (median, p99): `udpreach ping --stamp` vs stamp-suite's sender,
#     both against the same reflector (stamp-suite -i), COUNT packets at 1 ms.
# Usage: bench/stamp.sh [SECONDS] [SENDERS] [COUNT]   (default 5 s, 4 senders, 2000)
# BEFORE=/path/to/an/older/udpreach adds its reflector's rows (same run, same load).
source "$(dirname "$0")/lib.sh"
need python3
SECS=${1:-5}
SENDERS=${2:-4}
COUNT=${3:-2000}
SS=${STAMP_SUITE:-$(command -v stamp-suite || echo "$HOME/.cargo/bin/stamp-suite")}
[ -x "$SS" ] || { echo "bench: stamp-suite is missing (cargo install --locked stamp-suite)" >&2; exit 2; }
build_release
setup_pair
machine
echo "stamp-suite: $("$SS" --version)"
LOAD=$ROOT/target/release/examples/echo_load
# The per-destination reply budget (1000/s by default) would be what is
# measured: lift it, as echo_rate.sh lifts the plain-echo rate.
BUDGET=(--reply-budget 10000000 --reply-budget-bytes 1000000000000)

# replies/s, and replies per CPU-second of the reflector (see rate_per_cpu).
measure() { rate_per_cpu "$1" "$SECS" inc "$LOAD" "$2" "$SENDERS" 32 "$SECS" 44; }

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${BEFORE:-}" ] && echo "before: $BEFORE"
printf '%-40s %8s %12s %14s\n' reflector senders 'replies/s' 'per CPU-s'
for mode in stateless stateful; do
  if [ "$mode" = stateless ]; then uflag=(--stamp-stateless); sflag=(); else uflag=(); sflag=(--stateful-reflector); fi
  # BEFORE=/path/to/old/udpreach: its reflector too, on port 864, same run.
  bins=("$BIN"); [ -n "${BEFORE:-}" ] && bins+=("$BEFORE")
  for b in "${bins[@]}"; do
    if [ "$b" = "$BIN" ]; then name="udpreach server --stamp ($mode)"; port=862; else name="  BEFORE ($mode)"; port=864; fi
    bg_ins "$b" server --listen 198.18.0.2:$((port + 3000)) --stamp 198.18.0.2:$port "${uflag[@]}" "${BUDGET[@]}" >/dev/null
    upid=${PIDS[-1]}
    sleep 1
    printf '%-40s %8s %s\n' "$name" "$SENDERS" "$(measure "$upid" 198.18.0.2:$port)"
    kill "$upid" 2>/dev/null || true
    wait "$upid" 2>/dev/null || true
  done
  bg_ins "$SS" -i --local-addr 198.18.0.2 --local-port 863 "${sflag[@]}" >/dev/null
  spid=${PIDS[-1]}
  sleep 1
  printf '%-40s %8s %s\n' "stamp-suite -i ($mode)" "$SENDERS" "$(measure "$spid" 198.18.0.2:863)"
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  sleep 0.5
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
bg_ins "$SS" -i --local-addr 198.18.0.2 --local-port 863 >/dev/null
sleep 1
printf '%-44s %10s %10s\n' "sender (reflector: stamp-suite -i)" 'p50 ms' 'p99 ms'
inc "$BIN" ping --stamp 198.18.0.2:863 -c "$COUNT" -i 1ms -q --json | python3 -c '
import json,sys
s=json.load(sys.stdin)["summary"]
for name, k in (("udpreach ping --stamp (kernel timestamps)", "rtt"), ("udpreach ping --stamp (user space)", "rtt_user")):
    print("%-44s %10.3f %10.3f" % (name, s[k]["p50_ms"], s[k]["p99_ms"]))'
inc "$SS" --remote-addr 198.18.0.2 --remote-port 863 --local-port 8620 -c "$COUNT" -d 1 -L 1 --output-format json \
  | tail -n 1 | python3 -c '
import json,sys
s=json.load(sys.stdin)
print("%-44s %10.3f %10.3f" % ("stamp-suite sender", s["median_rtt_ms"], s["p99_rtt_ms"]))'
