#!/usr/bin/env bash
# The scaling table of docs/PERFORMANCE.md in one command:
#  (1) `udpreach ports` time against port count (1k, 10k, 64k) and RTT
#      (plain veth ~0.1 ms, 10, 50, 200 ms through the lab's link emulator,
#      +-5 ms jitter with reordering), each with 10% of the ports blocked
#      (half inbound, half return) and 2% loss each way, every verdict
#      checked; the 1k cells also run the seed's serial algorithm and
#      `nmap -sU` on 20 ports of the same link;
#  (2) one server, 1, 4 and 16 clients sweeping disjoint slices of
#      1024-65535 at once (plain veth, same blocked ports and loss): the
#      aggregate rate, every verdict checked.
# Each cell is one bench/sweep_rtt.sh run (its own namespaces and server)
# and prints the machine and the load average next to its numbers.
# Usage: bench/sweep_scaling.sh [RTTS [PORT_SETS [CLIENT_COUNTS]]]
#   e.g. bench/sweep_scaling.sh "0 50" "1024-65535" "1 4"
#   SERVER_ARGS is passed on (e.g. "--max-ports-per-source 16384": the
#   window a default server gives where the open-files limit is no bound).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RTTS=${1:-"0 10 50 200"}
SETS=${2:-"20000-20999 20000-29999 1024-65535"}
CLIENT_COUNTS=${3:-"1 4 16"}
(cd "$HERE/.." && cargo build --release -q -p udpreach --bin udpreach -p udpreach-lab-link)
export NO_BUILD=1
echo "== sweep time vs ports and RTT (10% blocked, 2% loss each way, +-5 ms jitter)"
for rtt in $RTTS; do
  for ports in $SETS; do
    seed=0
    [ "$ports" = 20000-20999 ] && seed=20
    SEED_PORTS=$seed "$HERE/sweep_rtt.sh" "$rtt" "$ports" 2 10 5 2>&1 \
      | grep -E '^(machine|load average|udpreach ports|seed algorithm|nmap)' || true
  done
done
echo "== one server, N clients at once (plain veth, 10% blocked, 2% loss)"
for n in $CLIENT_COUNTS; do
  CLIENTS=$n SEED_PORTS=0 "$HERE/sweep_rtt.sh" 0 1024-65535 2 10 2>&1 \
    | grep -E '^(load average|udpreach ports)' || true
done
