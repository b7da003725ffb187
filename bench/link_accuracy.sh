#!/usr/bin/env bash
# Accuracy of the lab's link emulator (crates/udpreach-lab-link), each part
# in its own namespace set, all in one run:
#  (a) delay error at 10k pps: 20,000 pings at 100 us through 5 ms each way
#      (10 ms RTT), no jitter: RTT percentiles against the configured 10 ms,
#      and the emulator's own lateness (send time against schedule);
#  (b) loss: 4,000 pings at 1 ms through 10 % loss client to server: lost
#      against configured and against what the emulator dropped;
#  (c) max rate: closed-loop echo load (examples/echo_load, 4 senders x 32
#      in flight, 64-byte datagrams) through the emulator with no delay,
#      against the plain veth in the same run.
#  BEFORE_BIN=PATH runs (a) with that udpreach binary too, first: a
#  before/after comparison in the same run.
# Usage: bench/link_accuracy.sh
source "$(dirname "$0")/lib.sh"
need python3
build_release
build_link
(cd "$ROOT" && cargo build --release -q -p udpreach --example echo_load)
export LOAD=$ROOT/target/release/examples/echo_load
machine
here=$(cd "$(dirname "$0")" && pwd)

# One scenario per child shell, so each gets fresh namespaces and cleanup.
scenario() {
  bash -c 'source "$1/lib.sh"; shift; eval "$@"' _ "$here" "$@"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for bin in ${BEFORE_BIN:-} "$BIN"; do
echo "udpreach: $bin"
(export BIN=$bin; scenario '
setup_emulated delay=5ms delay=5ms
bg_ins "$BIN" server --listen 198.18.0.2:4000 --reply-budget 100000
sleep 0.5
inc "$BIN" ping -i 100us -c 20000 -q --json 198.18.0.2 > /tmp/ua.$$.json || true
stop_emulator
python3 - /tmp/ua.$$.json "$LINK_STATS" <<PY
import json, sys, types
ns = lambda f: json.load(open(f), object_hook=lambda d: types.SimpleNamespace(**d))
s = ns(sys.argv[1]).summary; e = ns(sys.argv[2])
r = s.rtt
print(f"(a) 10 ms RTT, 10k pps: sent {s.transmitted} at {s.send_rate_pps:.0f}/s, received {s.received}; "
      f"RTT min {r.min_ms:.3f} p50 {r.p50_ms:.3f} p90 {r.p90_ms:.3f} p99 {r.p99_ms:.3f} max {r.max_ms:.3f} ms")
drops = sum(x.dropped_random + x.dropped_burst + x.dropped_queue + x.dropped_held for x in (e.a_to_b, e.b_to_a))
print(f"    lost {s.lost} (up {s.upstream_lost}, down {s.downstream_lost}, unknown {s.direction_unknown}), "
      f"late {s.late}, withheld {s.withheld}; frames the emulator dropped: {drops}")
for d, x in (("a_to_b", e.a_to_b), ("b_to_a", e.b_to_a)):
    print(f"    emulator {d}: lateness mean {x.lateness_mean_us} us, max {x.lateness_max_us} us, "
          f"{x.late} of {x.frames_out} later than 200 us, {x.send_retries} send retries, {x.send_errors} send errors")
PY
rm -f /tmp/ua.$$.json')
done

scenario '
setup_emulated delay=1ms,loss=10% delay=1ms
bg_ins "$BIN" server --listen 198.18.0.2:4000
sleep 0.5
inc "$BIN" ping -i 1ms -c 4000 -q --json 198.18.0.2 > /tmp/ub.$$.json || true
stop_emulator
python3 - /tmp/ub.$$.json "$LINK_STATS" <<PY
import json, sys, types
ns = lambda f: json.load(open(f), object_hook=lambda d: types.SimpleNamespace(**d))
s = ns(sys.argv[1]).summary; x = ns(sys.argv[2]).a_to_b
print(f"(b) 10 % loss up: ping lost {s.lost} of {s.transmitted} ({100*s.lost/s.transmitted:.2f} %), "
      f"emulator dropped {x.dropped_random} of {x.frames_in} frames ({100*x.dropped_random/max(1,x.frames_in):.2f} %)")
PY
rm -f /tmp/ub.$$.json'

scenario '
setup_pair
bg_ins "$BIN" server --listen 198.18.0.2:4000 --plain-echo-rate 1000000
sleep 0.5
u=$(inc "$LOAD" 198.18.0.2:4000 4 32 3 64)
python3 -c "import json,sys,types; pps=json.loads(sys.argv[1], object_hook=lambda d: types.SimpleNamespace(**d)).pps; print(f\"(c) plain veth:           {pps:9.0f} echoes/s\")" "$u"'

scenario '
setup_emulated "" ""
bg_ins "$BIN" server --listen 198.18.0.2:4000 --plain-echo-rate 1000000
sleep 0.5
u=$(inc "$LOAD" 198.18.0.2:4000 4 32 3 64)
stop_emulator
python3 -c "import json,sys,types; ns=lambda t: json.loads(t, object_hook=lambda d: types.SimpleNamespace(**d)); u=ns(sys.argv[1]); e=ns(open(sys.argv[2]).read()); print(f\"    through the emulator: {u.pps:9.0f} echoes/s (each 2 frames relayed; send retries {e.a_to_b.send_retries+e.b_to_a.send_retries}, errors {e.a_to_b.send_errors+e.b_to_a.send_errors})\")" "$u" "$LINK_STATS"'
