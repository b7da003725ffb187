#!/usr/bin/env bash
# CPU and RSS of `udpreach monitor` probing N targets at 1 probe/s each, vs
# prometheus-blackbox-exporter (ICMP module) probing the same N addresses
# once a second (driven by a Prometheus scraping /probe every 1s), in the
# same run on the same link. Targets: N addresses on the server namespace
# (198.18.1.0/24, 198.18.2.0/24, ...) with one udpreach server on a wildcard
# address answering them all.
#
# Usage: bench/monitor.sh [TARGETS] [SECONDS]   (default 1000 targets, 60 s)
# BEFORE=/path/to/an/older/udpreach adds a row for that binary (same run);
# BIN_GIVEN=1 BIN=/path/to/udpreach measures a binary built earlier.
# Each row prints the load average when its measurement ended: the machine
# may be shared, so compare rows of one run, never across runs.
source "$(dirname "$0")/lib.sh"
need prometheus prometheus-blackbox-exporter python3
N=${1:-1000}
SECS=${2:-60}
# BIN=/path/to/udpreach measures that binary instead of building this tree.
[ -n "${BIN_GIVEN:-}" ] || (cd "$ROOT" && cargo build --release -q -p udpreach --bin udpreach)
setup_pair
machine
WORK=$(mktemp -d)
trap 'cleanup; rm -rf "$WORK"' EXIT INT TERM

# N target addresses on the server side, routed from the client over the link.
addrs=()
for ((i = 0; i < N; i++)); do
  addrs+=("198.18.$((1 + i / 250)).$((1 + i % 250))")
done
for a in "${addrs[@]}"; do echo "address add $a/32 dev us$$"; done | ip -n "$NSS" -batch -
for ((s = 1; s <= (N + 249) / 250; s++)); do ip -n "$NSC" route add "198.18.$s.0/24" dev "uc$$"; done
# One agent source address: the per-destination reply budget (1000/s) is
# raised so the server's own limit does not show up in the numbers.
bg_ins "$BIN" server --listen 0.0.0.0:4000 --reply-budget 100000 --max-probe-rate 100000
sleep 1

# CPU share of one core, RSS now and at most (MB) of a pid over $SECS, and
# the load average at the end.
measure() { # pid label
  local pid=$1 t0 t1 hz hwm rss
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep "$SECS"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  hz=$(getconf CLK_TCK)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  python3 -c "import sys; c=(int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3]); print(f'{sys.argv[6]:52} {100*c/int(sys.argv[7]):8.2f} {int(sys.argv[4])/1024:9.1f} {int(sys.argv[5])/1024:9.1f}   {sys.argv[8]}')" \
    "$t0" "$t1" "$hz" "$rss" "$hwm" "$2" "$SECS" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# Background processes start with `ip netns exec` itself, not through the
# inc function: a backgrounded function is a subshell whose pid is not the
# program's, so killing it left the program running (the earlier bug: the
# first Prometheus still held its port when the next started).

# Starts Prometheus in the client namespace on 127.0.0.1:$2 with config $1
# and data dir $3; waits until it answers. Sets PROM.
start_prometheus() { # config port datadir
  ip netns exec "$NSC" prometheus --config.file="$1" --storage.tsdb.path="$3" \
    --web.listen-address="127.0.0.1:$2" --log.level=error & PROM=$!; PIDS+=($PROM)
  for _ in $(seq 100); do
    inc bash -c "exec 3<>/dev/tcp/127.0.0.1/$2" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: prometheus did not start on port $2" >&2; exit 1
}

# Stops a process and waits until it has exited (its ports are free again).
stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

http_get() { # port path
  # shellcheck disable=SC2016 # expanded by the inner bash
  inc bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; printf "GET %s HTTP/1.0\r\n\r\n" "$1" >&3; cat <&3' "$1" "$2"
}

printf '%-52s %8s %9s %9s   %s\n' "agent ($N targets, 1 probe/s each, ${SECS}s)" 'CPU %' 'RSS MB' 'max MB' 'load average'

# 1. udpreach monitor (this build, then BEFORE if given), scraped every 5 s.
{
  echo 'listen = "127.0.0.1:9464"'
  echo '[[group]]'
  echo 'name = "bench"'
  printf 'targets = ['; printf '"%s",' "${addrs[@]}"; echo ']'
  echo '[group.ping]'
  echo 'interval = "1s"'
} > "$WORK/monitor.toml"
cat > "$WORK/prom-udpreach.yml" <<YML
global: { scrape_interval: 5s }
scrape_configs:
  - job_name: udpreach
    static_configs: [ { targets: ['127.0.0.1:9464'] } ]
YML
run_agent() { # binary label
  ip netns exec "$NSC" "$1" monitor --config "$WORK/monitor.toml" 2>"$WORK/monitor.log" & MON=$!; PIDS+=($MON)
  start_prometheus "$WORK/prom-udpreach.yml" 9090 "$WORK/d-$RANDOM"
  sleep 5 # warm-up: every target started
  measure "$MON" "$2"
  http_get 9464 /metrics > "$WORK/metrics.txt" || true
  sent=$(grep -h '^udpreach_probes_sent_total' "$WORK/metrics.txt" | awk '{s+=$2} END {print s+0}')
  repl=$(grep -h '^udpreach_replies_total' "$WORK/metrics.txt" | awk '{s+=$2} END {print s+0}')
  echo "  probes sent $sent, replies $repl (the difference: probes in flight at the scrape)"
  stop "$MON"; stop "$PROM"
}
run_agent "$BIN" "udpreach monitor"
if [ -n "${BEFORE:-}" ]; then
  run_agent "$BEFORE" "udpreach monitor (BEFORE=$(basename "$BEFORE"))"
fi

# 2. blackbox_exporter, ICMP module, one /probe per target per second.
cat > "$WORK/blackbox.yml" <<YML
modules:
  icmp:
    prober: icmp
    timeout: 900ms
    icmp: { preferred_ip_protocol: ip4 }
YML
{
  echo 'global: { scrape_interval: 1s, scrape_timeout: 1s }'
  echo 'scrape_configs:'
  echo '  - job_name: blackbox'
  echo '    metrics_path: /probe'
  echo '    params: { module: [icmp] }'
  printf '    static_configs: [ { targets: ['; printf "'%s'," "${addrs[@]}"; echo '] } ]'
  echo '    relabel_configs:'
  echo '      - { source_labels: [__address__], target_label: __param_target }'
  echo '      - { source_labels: [__param_target], target_label: instance }'
  echo '      - { target_label: __address__, replacement: 127.0.0.1:9115 }'
} > "$WORK/prom-blackbox.yml"
ip netns exec "$NSC" prometheus-blackbox-exporter --config.file="$WORK/blackbox.yml" --web.listen-address=127.0.0.1:9115 --log.level=error & BB=$!; PIDS+=($BB)
start_prometheus "$WORK/prom-blackbox.yml" 9091 "$WORK/d-bb"
sleep 5
measure "$BB" "blackbox_exporter icmp (/probe each 1s)"
prom_value() { # query (URL-encoded)
  http_get 9091 "/api/v1/query?query=$1" | tail -1 | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(round(float(r[0]["value"][1])) if r else "?")'
}
# Prometheus's `up` per /probe scrape: how many probes were asked for, and
# how many blackbox_exporter answered within the 1 s scrape timeout.
echo "  /probe scrapes in the last ${SECS}s: $(prom_value "sum(count_over_time(up%5B${SECS}s%5D))"), answered in time: $(prom_value "sum(sum_over_time(up%5B${SECS}s%5D))"), probe_success=1: $(prom_value "sum(sum_over_time(probe_success%5B${SECS}s%5D))")"
stop "$BB"; stop "$PROM"
