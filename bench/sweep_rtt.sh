#!/usr/bin/env bash
# `udpreach ports` at a given RTT through the lab's link emulator
# (crates/udpreach-lab-link), with blocked ports and loss, checked port by
# port; then, on the same link, the seed's serial algorithm
# (bench/seed_client.py) and `nmap -sU` on 20 ports, two of them blocked.
#
# Usage: bench/sweep_rtt.sh RTT_MS PORTS [LOSS_PCT [BLOCKED_PCT [JITTER_MS [SEED]]]]
#   RTT_MS 0 = plain veth (no emulator; loss with nftables), else the
#   emulator with RTT_MS/2 each way, +-JITTER_MS (reordering), LOSS_PCT loss
#   each way. PORTS: a udpreach port spec, e.g. 20000-22999 or 1024-65535.
#   BLOCKED_PCT of the ports blocked, half inbound (dropped at the server's
#   input), half return (replies dropped at the client's input).
#   SEED_PORTS=0 skips the seed algorithm's and nmap's runs.
#   CLIENTS=N splits PORTS into N slices swept at once by N clients (one
#   server, one session each); the server then gets a window of
#   $WINDOW_TOTAL/N ports per session (default 18000/N: the sessions' windows
#   must fit the server's total, or opens fail as `server_error`).
#   SERVER_ARGS adds options to the server's command line.
#   PERF=FILE records the server under `perf record -g` into FILE (read it
#   with `perf report -i FILE --children --sort sym`). Every run ends with
#   the CPU seconds each server thread used.
source "$(dirname "$0")/lib.sh"
need nft python3
RTT=${1:?RTT_MS}; PORTS=${2:?PORTS}; LOSS=${3:-0}; BLOCKED=${4:-0}; JITTER=${5:-0}; SEED=${6:-1}
build_release
build_link
if [ "$RTT" = 0 ]; then
  setup_pair
else
  half=$(python3 -c "print($RTT / 2)")
  spec="delay=${half}ms,jitter=${JITTER}ms,loss=${LOSS}%"
  setup_emulated "$spec" "$spec"
fi
machine
CLIENTS=${CLIENTS:-1}
if [ "$CLIENTS" -gt 1 ]; then
  per=$(( ${WINDOW_TOTAL:-18000} / CLIENTS ))
  SERVER_ARGS="${SERVER_ARGS:-} --max-sessions-per-source 64 --max-ports-per-source $(( per * CLIENTS )) --max-ports-per-session $per"
fi
# shellcheck disable=SC2086
bg_ins "$BIN" server --listen 198.18.0.2:4000 --allow-ports 1024-65535 ${SERVER_ARGS:-}
SPID=${PIDS[-1]}
if [ -n "${PERF:-}" ]; then
  need perf
  perf record -F 2999 -g -p "$SPID" -o "$PERF" 2>/dev/null &
  PERFPID=$!
fi
sleep 0.5
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

sets=$(mktemp -d)
python3 - "$SEED" "$sets" "$PORTS" "$BLOCKED" "$([ "$RTT" = 0 ] && echo "$LOSS" || echo 0)" "$CLIENTS" <<'PY'
import random, sys
seed, d, spec, blocked_pct, nft_loss = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
ports = []
for part in spec.split(","):
    a, _, b = part.partition("-")
    ports += range(int(a), int(b or a) + 1)
n = int(sys.argv[6])
size = -(-len(ports) // n)
slices = [ports[i:i + size] for i in range(0, len(ports), size)]
open(f"{d}/slices", "w").write("\n".join(f"{s[0]}-{s[-1]}" for s in slices))
ports = [p for p in ports if p != 4000]
rnd = random.Random(seed)
blocked = rnd.sample(ports, int(len(ports) * blocked_pct / 100))
inbound, ret = blocked[::2], blocked[1::2]
open(f"{d}/inbound", "w").write("\n".join(map(str, sorted(inbound))))
open(f"{d}/return", "w").write("\n".join(map(str, sorted(ret))))
def ruleset(name, key, ports):
    elements = f" set {name} {{ type inet_service; elements = {{ {', '.join(map(str, ports))} }} }}\n" if ports else ""
    match = f"  udp {key} @{name} drop\n" if ports else ""
    loss = f"  meta l4proto udp numgen random mod 100 < {int(nft_loss)} drop\n" if nft_loss else ""
    return (f"table inet bench {{\n{elements}"
            f" chain input {{ type filter hook input priority 0; policy accept;\n{match}{loss} }}\n}}\n")
open(f"{d}/server.nft", "w").write(ruleset("inb", "dport", inbound))
open(f"{d}/client.nft", "w").write(ruleset("ret", "sport", ret))
PY
ins nft -f "$sets/server.nft"
inc nft -f "$sets/client.nft"

t0=$(date +%s.%N)
i=0
CPIDS=()
while read -r slice || [ -n "$slice" ]; do
  inc "$BIN" ports 198.18.0.2 "$slice" --json > "$sets/a$i.json" &
  CPIDS+=($!)
  i=$((i + 1))
done < "$sets/slices"
for p in "${CPIDS[@]}"; do wait "$p" || true; done
t1=$(date +%s.%N)
python3 - "$sets" "$t0" "$t1" "$RTT" "$JITTER" "$LOSS" "$BLOCKED" "$CLIENTS" <<'PY'
import json, sys
d, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rtt, jitter, loss, blocked, clients = sys.argv[4:9]
docs = [json.load(open(f"{d}/a{i}.json")) for i in range(int(clients))]
inbound = set(map(int, open(f"{d}/inbound").read().split()))
ret = set(map(int, open(f"{d}/return").read().split()))
want = lambda p: "denied_by_server" if p == 4000 else "inbound_blocked" if p in inbound else "return_blocked" if p in ret else "reachable"
wrong = [(p["port"], p["verdict"], want(p["port"])) for doc in docs for p in doc["ports"] if p["verdict"] != want(p["port"])]
total = sum(doc["total"] for doc in docs)
sweep = max(doc["elapsed_ms"] for doc in docs) / 1000
probes = sum(doc["probes_sent"] for doc in docs)
link = f"RTT {rtt} ms +-{jitter} ms" if rtt != "0" else "plain veth"
who = f"{clients} clients at once, " if clients != "1" else ""
print(f"udpreach ports, {who}{total} ports, {link}, {loss}% loss each way, {blocked}% blocked "
      f"({len(inbound)} inbound, {len(ret)} return): sweep {sweep:.2f} s (wall {t1 - t0:.2f} s, "
      f"{total / (t1 - t0):.0f} ports/s), probes {probes}, wrong verdicts {len(wrong)} {wrong[:5]}")
PY
if [ -n "${PERF:-}" ]; then kill -INT "$PERFPID"; wait "$PERFPID" || true; fi
for t in /proc/"$SPID"/task/*; do
  echo "server thread $(cat "$t/comm"): $(awk '{print ($14 + $15) / 100}' "$t/stat") CPU s"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${SEED_PORTS:-20}" != 0 ]; then
  # The seed algorithm on 20 ports of the same link, 2 of them blocked inbound.
  ins nft flush ruleset
  inc nft flush ruleset
  ins nft -f - <<'NFT'
table inet seed {
  chain input { type filter hook input priority 0; policy accept; udp dport { 30005, 30015 } drop; }
}
NFT
  t0=$(date +%s.%N)
  inc python3 "$ROOT/bench/seed_client.py" 198.18.0.2 4000 30000-30019 > "$sets/c.txt" || true
  t1=$(date +%s.%N)
  python3 -c "import sys; n=20; t=float(sys.argv[2])-float(sys.argv[1]); print(f'seed algorithm, 20 ports (2 blocked), same link: {t:.2f} s = {t/n*1000:.0f} ms per port; unreachable reported: {sys.argv[3]}')" "$t0" "$t1" "$(grep -c unreachable "$sets/c.txt" || true)"
  if command -v nmap >/dev/null; then
    # nmap -sU on the same 20 ports (closed: the kernel answers port
    # unreachable, unlimited here; the 2 blocked ones stay silent).
    ins sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_msgs_per_sec=1000000 net.ipv4.icmp_msgs_burst=1000000
    t0=$(date +%s.%N)
    inc nmap -sU -n -Pn -p 30000-30019 198.18.0.2 > "$sets/n.txt" 2>&1 || true
    t1=$(date +%s.%N)
    python3 -c "import sys; n=20; t=float(sys.argv[2])-float(sys.argv[1]); print(f'nmap -sU, same 20 ports, same link: {t:.2f} s = {t/n*1000:.0f} ms per port; open|filtered: {sys.argv[3]}')" "$t0" "$t1" "$(grep -c 'open|filtered' "$sets/n.txt" || true)"
  else
    echo "nmap -sU: not installed (apt-get install nmap), skipped"
  fi
fi
if [ "$RTT" != 0 ]; then
  stop_emulator
  python3 - "$LINK_STATS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for d in ("a_to_b", "b_to_a"):
    x = s[d]
    print(f"emulator {d}: {x['frames_in']} in, {x['frames_out']} out, dropped {x['dropped_random']} random, "
          f"{x['send_retries']} send retries, {x['send_errors']} send errors, {x['reordered']} reordered, "
          f"lateness mean {x['lateness_mean_us']} us max {x['lateness_max_us']} us, late (>200 us) {x['late']}")
PY
fi
rm -rf "$sets"
