#!/usr/bin/env bash
# CPU and RSS of `udpreach monitor` probing N targets at 1 probe/s each, vs
# prometheus-blackbox-exporter (ICMP module) probing the same N addresses
# once a second (driven by a Prometheus scraping /probe every 1s), in the
# same run on the same link. Targets: N addresses on the server namespace
# (198.18.1.0/24, 198.18.2.0/24, ...) with one udpreach server on a wildcard
# address answering them all.
# Usage: bench/monitor.sh [TARGETS] [SECONDS]   (default 1000 targets, 60 s)
source "$(dirname "$0")/lib.sh"
need prometheus prometheus-blackbox-exporter python3
N=${1:-1000}
SECS=${2:-60}
(cd "$ROOT" && cargo build --release -q -p udpreach --bin udpreach)
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

# Resident set (max) and CPU seconds of a pid over the run.
measure() { # pid label
  local pid=$1 t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep "$SECS"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  local hz; hz=$(getconf CLK_TCK)
  local hwm; hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  python3 -c "import sys; c=(int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3]); print(f'{sys.argv[6]:44} {100*c/int(sys.argv[7]):8.2f} {int(sys.argv[4])/1024:9.1f} {int(sys.argv[5])/1024:9.1f}')" "$t0" "$t1" "$hz" "$rss" "$hwm" "$2" "$SECS"
}

# 1. udpreach monitor, scraped by Prometheus every 5 s.
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
inc "$BIN" monitor --config "$WORK/monitor.toml" 2>"$WORK/monitor.log" & MON=$!; PIDS+=($MON)
inc prometheus --config.file="$WORK/prom-udpreach.yml" --storage.tsdb.path="$WORK/d1" \
  --web.listen-address=127.0.0.1:9090 --log.level=error & P1=$!; PIDS+=($P1)
sleep 5 # warm-up: every target started
printf '%-44s %8s %9s %9s\n' "agent ($N targets, 1 probe/s each, ${SECS}s)" 'CPU %' 'RSS MB' 'max MB'
measure "$(pgrep -P $MON || echo $MON)" "udpreach monitor" &
MP=$!
wait $MP
inc bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' > "$WORK/metrics.txt" || true
sent=$(grep -h '^udpreach_probes_sent_total' "$WORK/metrics.txt" | awk '{s+=$2} END {print s+0}')
repl=$(grep -h '^udpreach_replies_total' "$WORK/metrics.txt" | awk '{s+=$2} END {print s+0}')
echo "  udpreach: probes sent $sent, replies $repl"
kill $MON $P1 2>/dev/null || true; wait $MON $P1 2>/dev/null || true

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
inc prometheus-blackbox-exporter --config.file="$WORK/blackbox.yml" --web.listen-address=127.0.0.1:9115 --log.level=error & BB=$!; PIDS+=($BB)
inc prometheus --config.file="$WORK/prom-blackbox.yml" --storage.tsdb.path="$WORK/d2" \
  --web.listen-address=127.0.0.1:9090 --log.level=error & P2=$!; PIDS+=($P2)
sleep 5
measure "$(pgrep -P $BB || echo $BB)" "blackbox_exporter icmp (/probe each 1s)"
inc bash -c 'exec 3<>/dev/tcp/127.0.0.1/9090; printf "GET /api/v1/query?query=sum(probe_success) HTTP/1.0\r\n\r\n" >&3; cat <&3' | tail -1 | python3 -c "import json,sys; print('  blackbox: targets with probe_success=1 now:', json.load(sys.stdin)['data']['result'][0]['value'][1])" || true
kill $BB $P2 2>/dev/null || true
