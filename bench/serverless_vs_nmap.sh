#!/usr/bin/env bash
# `udpreach ports --no-server` against `nmap -sU`: the same 1,000 ports of the
# same namespace pair, in the same run, both times and how many verdicts agree
# (with each other and with what the server namespace really runs).
#
# The server namespace runs socat on 53, 123, 161 (they echo the DNS, NTP and
# SNMP requests both tools send, so they answer) and 7000 (an unknown port:
# both tools send it an empty datagram, which socat ignores), rejects 7001
# with admin-prohibited and drops 7002 in its input chain; every other port is
# closed. Ports: 1-996,7000-7003.
#
#  (a) ICMP rate limiting off in the server namespace (as in the test lab).
#  (b) the kernel's defaults: net.ipv4.icmp_ratelimit=1000 (one error per
#      second per peer after a burst of 6), icmp_msgs_per_sec=1000. About
#      1,000 closed ports at one error a second: each tool takes ~17 minutes.
#
# Each run starts after 7 s of quiet so the limiter's burst is full for both.
# Usage: bench/serverless_vs_nmap.sh [a|b|both]   (default: both)
source "$(dirname "$0")/lib.sh"
need nmap socat nft python3
WHICH=${1:-both}
PORTS=1-996,7000-7003
build_release
setup_pair
machine
echo "nmap: $(nmap --version | head -1)"
for p in 53 123 161 7000; do
  bg_ins socat UDP6-RECVFROM:$p,fork PIPE
done
ins nft -f - <<'EOF'
table inet bench {
  chain input { type filter hook input priority 0; policy accept;
    udp dport 7001 reject with icmpx admin-prohibited
    udp dport 7002 drop
  }
}
EOF
sleep 0.5
out=$(mktemp -d)

scenario() {
  local name=$1
  sleep 7
  local t0 t1 t2 t3
  t0=$(date +%s.%N)
  inc nmap -sU -n -Pn -p "$PORTS" 198.18.0.2 -oX "$out/$name-nmap.xml" > /dev/null
  t1=$(date +%s.%N)
  sleep 7
  t2=$(date +%s.%N)
  inc "$BIN" ports --no-server 198.18.0.2 "$PORTS" --json > "$out/$name-udpreach.json" || true
  t3=$(date +%s.%N)
  python3 - "$out" "$name" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys, xml.etree.ElementTree as ET
d, name = sys.argv[1], sys.argv[2]
t0, t1, t2, t3 = map(float, sys.argv[3:7])
def ranges(spec):
    for part in filter(None, spec.split(",")):
        a, _, b = part.partition("-")
        yield from range(int(a), int(b or a) + 1)
root = ET.parse(f"{d}/{name}-nmap.xml").getroot()
nmap = {}
for ports in root.iter("ports"):
    for ep in ports.findall("extraports"):
        for er in ep.findall("extrareasons"):
            for p in ranges(er.get("ports", "")):
                nmap[p] = ep.get("state")
    for p in ports.findall("port"):
        nmap[int(p.get("portid"))] = p.find("state").get("state")
ours_doc = json.load(open(f"{d}/{name}-udpreach.json"))
spell = {"open": "open", "closed": "closed", "filtered": "filtered",
         "open_filtered": "open|filtered", "not_tested": "not tested"}
ours = {p["port"]: spell[p["verdict"]] for p in ours_doc["ports"]}
truth = lambda p: {53: "open", 123: "open", 161: "open", 7000: "open|filtered",
                   7001: "filtered", 7002: "open|filtered"}.get(p, "closed")
ports = sorted(ours)
agree = sum(1 for p in ports if nmap.get(p) == ours[p])
ours_right = sum(1 for p in ports if ours[p] == truth(p))
nmap_right = sum(1 for p in ports if nmap.get(p) == truth(p))
diff = [(p, nmap.get(p), ours[p]) for p in ports if nmap.get(p) != ours[p]]
count = lambda m: {s: sum(1 for p in ports if m.get(p) == s) for s in ["open", "closed", "filtered", "open|filtered"]}
rl = ours_doc.get("icmp_rate_limit")
print(f"({name}) {len(ports)} ports")
print(f"    nmap -sU            {t1 - t0:8.2f} s  {count(nmap)}  right {nmap_right}/{len(ports)}")
print(f"    udpreach --no-server {t3 - t2:7.2f} s  {count(ours)}  right {ours_right}/{len(ports)}"
      f"  ({ours_doc['probes_sent']} probes, {ours_doc['canaries_sent']} canaries)")
print(f"    verdicts agree: {agree}/{len(ports)}; differ: {diff[:10]}")
if rl:
    print(f"    udpreach saw ICMP rate limiting after {rl['detected_after_ms']/1000:.1f} s: 1 error per {rl['interval_ms']:.0f} ms")
print(f"    speed: udpreach / nmap = {(t3 - t2) / (t1 - t0):.3f}")
PY
}

if [ "$WHICH" = a ] || [ "$WHICH" = both ]; then
  ins sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv4.icmp_msgs_per_sec=1000000 net.ipv4.icmp_msgs_burst=1000000
  scenario a
fi
if [ "$WHICH" = b ] || [ "$WHICH" = both ]; then
  ins sysctl -qw net.ipv4.icmp_ratelimit=1000 net.ipv4.icmp_ratemask=6168 net.ipv4.icmp_msgs_per_sec=1000 net.ipv4.icmp_msgs_burst=50
  scenario b
fi
rm -rf "$out"
