#!/usr/bin/env bash
# Echo rate with the per-destination reply budget in place vs before it
# (commit d1027f0, the last without it), same link, same closed-loop load
# (examples/echo_load: SENDERS sockets from the client's one address, WINDOW
# datagrams in flight each, every datagram different), same run:
#   before         d1027f0 server, --plain-echo-rate 1000000
#   budget, open   this server, --plain-echo-rate 1000000 --reply-budget 10000000
#                  (every reply goes through the budget, which never refuses:
#                  the cost of the check)
#   budget, default this server, --plain-echo-rate 1000000 (default budget:
#                  1000 replies/s to one address; what a spoofed victim gets)
# Usage: bench/echo_budget.sh [SECONDS] [SENDERS]
#   BEFORE_BIN=path/to/udpreach built from d1027f0; without it the script
#   builds one in a temporary git worktree (a cold release build).
source "$(dirname "$0")/lib.sh"
need python3 git
SECS=${1:-5}
SENDERS=${2:-4}
WINDOW=32
build_release
if [ -z "${BEFORE_BIN:-}" ]; then
  tmp=$(mktemp -d)
  git -C "$ROOT" worktree add -q --detach "$tmp/src" d1027f0
  (cd "$tmp/src" && CARGO_TARGET_DIR="$tmp/target" cargo build --release -q -p udpreach --bin udpreach)
  git -C "$ROOT" worktree remove --force "$tmp/src"
  BEFORE_BIN=$tmp/target/release/udpreach
fi
setup_pair
machine
LOAD=$ROOT/target/release/examples/echo_load
bg_ins "$BEFORE_BIN" server --listen 198.18.0.2:4000 --control 4001 --plain-echo-rate 1000000
bg_ins "$BIN" server --listen 198.18.0.2:5000 --control 5001 --plain-echo-rate 1000000 \
  --reply-budget 10000000 --reply-budget-bytes 1000000000000
bg_ins "$BIN" server --listen 198.18.0.2:6000 --control 6001 --plain-echo-rate 1000000
sleep 1
printf '%-34s %8s %12s\n' server senders 'echoes/s'
for size in 64 1400; do
  for run in "before:4000" "budget, open:5000" "budget, default:6000"; do
    name=${run%%:*}; port=${run##*:}
    r=$(inc "$LOAD" "198.18.0.2:$port" "$SENDERS" "$WINDOW" "$SECS" "$size")
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"{sys.argv[2]+' ('+sys.argv[3]+' B)':34} {sys.argv[4]:>8} {r['pps']:12.0f}\")" "$r" "$name" "$size" "$SENDERS"
  done
done
