#!/usr/bin/env bash
# Builds udpreach and demonstrates it on this machine's loopback: a server,
# a UDP ping (IPv4 and IPv6) and a port sweep. Needs only the Rust toolchain.
# Usage: ./demo.sh            (UDPREACH_DEMO_PORT=4000 by default;
#                             UDPREACH_DEMO_BIN=PATH uses that binary, no build)
set -euo pipefail
cd "$(dirname "$0")"
PORT=${UDPREACH_DEMO_PORT:-4000}
if [ -n "${UDPREACH_DEMO_BIN:-}" ]; then
  BIN=$UDPREACH_DEMO_BIN
else
  cargo build --release -q
  BIN=target/release/udpreach
fi

listens=(--listen "127.0.0.1:$PORT")
# IPv6 loopback when the host has it.
if [ -e /proc/net/if_inet6 ] && grep -q '^0\{31\}1 ' /proc/net/if_inet6; then
  listens+=(--listen "[::1]:$PORT")
  v6=1
else
  v6=0
fi
"$BIN" server "${listens[@]}" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
# Bounded wait for the server: its control port listens once it is ready.
for _ in $(seq 50); do
  kill -0 "$server" 2>/dev/null || break
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
kill -0 "$server" 2>/dev/null || { echo "demo: the server did not start (port $PORT taken? set UDPREACH_DEMO_PORT)" >&2; exit 2; }

# What an exit code means, per command (as in `udpreach COMMAND --help`).
meaning() {
  case "$1:$2" in
    ping:0) echo "at least one reply" ;;
    ping:1) echo "no reply at all" ;;
    ports:0) echo "every requested port is reachable" ;;
    ports:1) echo "some requested port is not reachable; the lines above say which and why (denied_by_server: outside the server's --allow-ports (by default 1024-65535 less the host's ephemeral range) or one of its own ports)" ;;
    *:2) echo "usage or local error, see the message above" ;;
    *) echo "see udpreach $1 --help" ;;
  esac
}
run() {
  echo; echo "\$ udpreach $*"
  local rc=0
  "$BIN" "$@" || rc=$?
  echo "(exit code $rc: $(meaning "$1" "$rc"))"
}
run ping -c 5 -i 200ms "127.0.0.1:$PORT"
[ "$v6" = 1 ] && run ping -c 3 -i 200ms -s 512 "[::1]:$PORT"
run ports "127.0.0.1:$PORT" 5000,6000,7000-8000
run ports "127.0.0.1:$PORT" 1-65535 -q
