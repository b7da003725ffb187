#!/usr/bin/env bash
# `udpreach ports` across the namespace link.
#  (a) ports 1024-65535, 10% of them blocked at random (half inbound: dropped
#      at the server's input; half return: replies dropped at the client's
#      input), plus 2% random loss each way: wall time and wrong verdicts.
#  (b) 10,000 ports, no loss: ports/s and packets/s.
#  (c) the seed's serial algorithm (bench/seed_client.py, speaking the legacy
#      protocol that udpreach server still serves) on 40 ports, same link.
# Usage: bench/ports_sweep.sh [SEED]
source "$(dirname "$0")/lib.sh"
need nft python3
SEED=${1:-1}
build_release
setup_pair
machine
bg_ins "$BIN" server --listen 198.18.0.2:4000
sleep 0.5

sets=$(mktemp -d)
python3 - "$SEED" "$sets" <<'PY'
import random, sys
rnd = random.Random(int(sys.argv[1]))
ports = list(range(1024, 65536))
blocked = rnd.sample([p for p in ports if p != 4000], len(ports) // 10)
inbound, ret = blocked[::2], blocked[1::2]
d = sys.argv[2]
open(f"{d}/inbound", "w").write("\n".join(map(str, sorted(inbound))))
open(f"{d}/return", "w").write("\n".join(map(str, sorted(ret))))
def ruleset(name, key, ports):
    return (f"table inet bench {{\n set {name} {{ type inet_service; elements = {{ {', '.join(map(str, ports))} }} }}\n"
            f" chain input {{ type filter hook input priority 0; policy accept;\n"
            f"  udp {key} @{name} drop\n"
            f"  meta l4proto udp numgen random mod 100 < 2 drop\n }}\n}}\n")
open(f"{d}/server.nft", "w").write(ruleset("inb", "dport", inbound))
open(f"{d}/client.nft", "w").write(ruleset("ret", "sport", ret))
PY
ins nft -f "$sets/server.nft"
inc nft -f "$sets/client.nft"

t0=$(date +%s.%N)
inc "$BIN" ports 198.18.0.2 1024-65535 --json > "$sets/a.json" || true
t1=$(date +%s.%N)
python3 - "$sets" "$t0" "$t1" <<'PY'
import json, sys
d, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
doc = json.load(open(f"{d}/a.json"))
inbound = set(map(int, open(f"{d}/inbound").read().split()))
ret = set(map(int, open(f"{d}/return").read().split()))
want = lambda p: "denied_by_server" if p == 4000 else "inbound_blocked" if p in inbound else "return_blocked" if p in ret else "reachable"
wrong = [(p["port"], p["verdict"], want(p["port"])) for p in doc["ports"] if p["verdict"] != want(p["port"])]
print(f"(a) 1024-65535 ({doc['total']} ports), {len(inbound)} inbound + {len(ret)} return blocked, 2% loss each way:")
print(f"    wall {t1 - t0:.2f} s (sweep {doc['elapsed_ms']/1000:.2f} s), probes {doc['probes_sent']}, counts {doc['counts']}")
print(f"    wrong verdicts: {len(wrong)} {wrong[:10]}")
PY

ins nft flush ruleset
inc nft flush ruleset
t0=$(date +%s.%N)
inc "$BIN" ports 198.18.0.2 20000-29999 --json > "$sets/b.json"
t1=$(date +%s.%N)
python3 - "$sets" "$t0" "$t1" <<'PY'
import json, sys
d, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
doc = json.load(open(f"{d}/b.json"))
s = doc["elapsed_ms"] / 1000
print(f"(b) 10,000 ports, no loss: wall {t1 - t0:.2f} s, sweep {s:.3f} s, {doc['total']/s:,.0f} ports/s, "
      f"{doc['probes_sent']} probes = {doc['probes_sent']/s:,.0f} probes/s, reachable {doc['reachable']}")
PY

t0=$(date +%s.%N)
inc python3 "$ROOT/bench/seed_client.py" 198.18.0.2 4000 30000-30039 > "$sets/c.txt"
t1=$(date +%s.%N)
python3 -c "import sys; n=40; t=float(sys.argv[2])-float(sys.argv[1]); print(f'(c) seed algorithm, 40 ports, no loss: {t:.2f} s = {n/t:.1f} ports/s; unreachable reported: {sys.argv[3]}')" "$t0" "$t1" "$(grep -c unreachable "$sets/c.txt" || true)"
rm -rf "$sets"
