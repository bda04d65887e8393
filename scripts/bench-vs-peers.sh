#!/usr/bin/env bash
# Benchmarks gravity-exporter against Debian's prometheus-process-exporter, both watching
# the same gravity double in the same run, then again with 1,000 extra idle processes:
#   idle RSS, CPU seconds per 1000 scrapes, /metrics latency p50/p99.
# Then the text parser (10k-series exposition) and the log classifier against mtail.
# Before each of the two rounds it also measures the cost at rest, same run, same double:
#   idle CPU (no scrapes at all, IDLE_SECONDS), then total CPU per hour and RSS while both
#   exporters are scraped every 15 s (RATE_SECONDS).
# Usage: scripts/bench-vs-peers.sh [SCRAPES]   (installs prometheus-process-exporter and mtail when missing)
#   IDLE_SECONDS=300 RATE_SECONDS=600   the defaults (the issue's 10 minutes at 15 s)
#   ONLY_RATE=1                         only the at-rest figures (no 1000-scrape, parser or mtail runs)
#   IDLE_WARMUP=130                     seconds without scrapes before the idle window: the exporter
#                                       collects every --collector.interval for two idle intervals
#                                       (2 x 60 s) after its start or its last scrape, then at rest
#   OTLP_CASE=1                         only OpenTelemetry off vs on: two release exporters on the same
#                                       double in the same run, one exporting over OTLP/gRPC every 10 s
#                                       to the tests' receiver (`gravity-double otlp-receiver`): CPU per
#                                       hour and RSS without scrapes (IDLE_SECONDS, after IDLE_WARMUP) and
#                                       scraped every 15 s (RATE_SECONDS)
#   PIPELINES_CASE=1                    only 1 vs 10 pipelines: 10 gravity doubles (each its own config,
#                                       port and log), one release exporter watching one of them, one
#                                       watching all 10 through a --gravity.config glob, and
#                                       process-exporter watching the same 10 processes, in the same run:
#                                       CPU without scrapes (IDLE_SECONDS, after IDLE_WARMUP), CPU per hour
#                                       scraped every 15 s (RATE_SECONDS), RSS
# Results go to stdout and target/bench/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
IDLE_SECONDS=${IDLE_SECONDS:-300}
IDLE_WARMUP=${IDLE_WARMUP:-130}
RATE_SECONDS=${RATE_SECONDS:-600}
ONLY_RATE=${ONLY_RATE:-0}
OTLP_CASE=${OTLP_CASE:-0}
PIPELINES_CASE=${PIPELINES_CASE:-0}
# the build directory: CARGO_TARGET_DIR when set, else ./target
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT=$TARGET/bench; mkdir -p "$OUT"; : > "$OUT/results.txt"
say() { echo "$*" | tee -a "$OUT/results.txt"; }

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
need=()
if [ "$OTLP_CASE" != 1 ]; then
  command -v prometheus-process-exporter >/dev/null || need+=(prometheus-process-exporter)
  command -v mtail >/dev/null || need+=(mtail)
fi
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# the shipped exporter alone (-p: without the double's test-only features)
cargo build --release --quiet -p gravity-exporter --bin gravity-exporter
cp "$TARGET/release/gravity-exporter" "$OUT/gravity-exporter"
# the gravity double (workspace member tests/gravity-double); its own speed does not matter
cargo build --quiet -p gravity-double --bin gravity-double
if [ "$ONLY_RATE" != 1 ] && [ "$OTLP_CASE" != 1 ] && [ "$PIPELINES_CASE" != 1 ]; then
  cargo bench --no-run --quiet 2>/dev/null
  SCRAPE=$(ls -t "$TARGET"/release/deps/scrape-* | grep -v '\.d$' | head -1)
fi
# the shipped binary as `cargo build` made it: `cargo bench --no-run` (above) rebuilds
# target/release/gravity-exporter with the dev-dependencies' features unified in (about 0.5 MB
# more code), so the measured copy is taken before that
BIN=$OUT/gravity-exporter
DOUBLE=$TARGET/debug/gravity-double
TCK=$(getconf CLK_TCK)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -P $$ sleep 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
GPORT=$(port); OPORT=$(port); PPORT=$(port)

# the gravity double, as a process named gravity
ln -s "$DOUBLE" "$work/gravity"
cp tests/fixtures/configs/mysql2mysql-stream.toml "$work/config.toml"
GRAVITY_DOUBLE_RATE=500 "$work/gravity" --config="$work/config.toml" --http-addr=127.0.0.1:$GPORT --log-file="$work/gravity.log" >/dev/null 2>&1 &
pids+=($!)
sleep 1

cpu() { awk -v t="$TCK" '{print ($14+$15)/t}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2*1024}' "/proc/$1/status"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
per_hour() { echo "$1 $2 $TCK $3" | awk '{printf "%.2f", ($1-$2)/$3*3600/$4}'; }

if [ "$PIPELINES_CASE" = 1 ]; then
  # 1 vs 10 pipelines: nine more doubles, each with a config of its own (pipeline-N)
  mkdir -p "$work/conf"
  sed 's/^name = "mysql2mysqlDemo"/name = "pipeline-1"/' "$work/config.toml" > "$work/conf/p1.toml"
  kill "${pids[0]}" 2>/dev/null || true
  for n in $(seq 1 10); do
    [ "$n" = 1 ] || sed "s/^name = \"mysql2mysqlDemo\"/name = \"pipeline-$n\"/" "$work/config.toml" > "$work/conf/p$n.toml"
    gp=$(port)
    GRAVITY_DOUBLE_RATE=500 "$work/gravity" --config="$work/conf/p$n.toml" --http-addr=127.0.0.1:$gp --log-file="$work/gravity-$n.log" >/dev/null 2>&1 &
    pids+=($!)
  done
  sleep 2
  OPORT10=$(port)
  common=(--probe.interval 0s --log.level warn --gravity.log-state-file none)
  "$BIN" --web.listen-address=127.0.0.1:$OPORT --gravity.config="$work/conf/p1.toml" "${common[@]}" >"$work/one.log" 2>&1 &
  ONE=$!; pids+=($ONE)
  "$BIN" --web.listen-address=127.0.0.1:$OPORT10 --gravity.config="$work/conf/*.toml" "${common[@]}" >"$work/ten.log" 2>&1 &
  TEN=$!; pids+=($TEN)
  prometheus-process-exporter -web.listen-address=127.0.0.1:$PPORT -procnames gravity >"$work/peer.log" 2>&1 &
  PEER=$!; pids+=($PEER)
  sleep 5
  say "== 1 vs 10 pipelines ($(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(ls /proc | grep -c '^[0-9]') processes)"
  say "pipelines seen: one exporter $(curl -s "http://127.0.0.1:$OPORT/metrics" | grep -c '^gravity_up{'), the other $(curl -s "http://127.0.0.1:$OPORT10/metrics" | grep -c '^gravity_up{'); series $(curl -s "http://127.0.0.1:$OPORT/metrics" | grep -vc '^#') vs $(curl -s "http://127.0.0.1:$OPORT10/metrics" | grep -vc '^#')"
  permin() { echo "$1 $2 $TCK $3" | awk '{printf "%.4f", ($1-$2)/$3*60/$4}'; }
  sleep "$IDLE_WARMUP"
  a0=$(ticks $ONE); b0=$(ticks $TEN); p0=$(ticks $PEER); t0=$(date +%s.%N)
  sleep "$IDLE_SECONDS"
  a1=$(ticks $ONE); b1=$(ticks $TEN); p1=$(ticks $PEER); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  say "idle, no scrapes, ${IDLE_SECONDS}s: 1 pipeline $(permin "$a1" "$a0" "$el") CPU-s/min rss_bytes=$(rss $ONE)   10 pipelines $(permin "$b1" "$b0" "$el") CPU-s/min rss_bytes=$(rss $TEN)   process-exporter (10 processes) $(permin "$p1" "$p0" "$el") CPU-s/min rss_bytes=$(rss $PEER)"
  a0=$(ticks $ONE); b0=$(ticks $TEN); p0=$(ticks $PEER); t0=$(date +%s.%N)
  end=$(( $(date +%s) + RATE_SECONDS ))
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s -o /dev/null "http://127.0.0.1:$OPORT/metrics" & c1=$!
    curl -s -o /dev/null "http://127.0.0.1:$OPORT10/metrics" & c2=$!
    curl -s -o /dev/null "http://127.0.0.1:$PPORT/metrics" & c3=$!
    wait "$c1" "$c2" "$c3"
    sleep 15
  done
  a1=$(ticks $ONE); b1=$(ticks $TEN); p1=$(ticks $PEER); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  h1=$(per_hour "$a1" "$a0" "$el"); h10=$(per_hour "$b1" "$b0" "$el"); hp=$(per_hour "$p1" "$p0" "$el")
  r1=$(rss $ONE); r10=$(rss $TEN)
  say "scraped every 15 s, ${RATE_SECONDS}s: 1 pipeline $h1 CPU-s/h rss_bytes=$r1   10 pipelines $h10 CPU-s/h rss_bytes=$r10   process-exporter (10 processes) $hp CPU-s/h rss_bytes=$(rss $PEER)"
  say "ratios 10/1: rss $(echo "$r10 $r1" | awk '{printf "%.2f", $1/$2}') (target <= 2)   cpu $(echo "$h10 $h1" | awk '{ if ($2>0) printf "%.2f", $1/$2; else print "n/a" }') (linear: <= 10)   threads: 1 pipeline $(awk '/Threads/ {print $2}' /proc/$ONE/status), 10 pipelines $(awk '/Threads/ {print $2}' /proc/$TEN/status)"
  exit 0
fi

if [ "$OTLP_CASE" = 1 ]; then
  # OpenTelemetry off and on, side by side: the same release binary and flags, one of them
  # also exporting metrics (and gravity's classified log records) over OTLP/gRPC every 10 s
  "$DOUBLE" otlp-receiver grpc 127.0.0.1:0 >"$work/rx.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do grep -q '^listening' "$work/rx.out" 2>/dev/null && break; sleep 0.1; done
  EP=$(awk '/^listening/ {print $2; exit}' "$work/rx.out")
  OPORT2=$(port)
  common=(--gravity.process-pattern "gravity --config=$work/config.toml" --probe.interval 0s --log.level warn)
  "$BIN" --web.listen-address=127.0.0.1:$OPORT "${common[@]}" >"$work/off.log" 2>&1 &
  OFF=$!; pids+=($OFF)
  "$BIN" --web.listen-address=127.0.0.1:$OPORT2 "${common[@]}" \
    --otlp.endpoint "$EP" --otlp.protocol grpc --otlp.interval 10s >"$work/on.log" 2>&1 &
  ON=$!; pids+=($ON)
  say "== OpenTelemetry off vs on ($(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); receiver $EP)"
  sleep "$IDLE_WARMUP"
  f0=$(ticks $OFF); n0=$(ticks $ON); t0=$(date +%s.%N)
  sleep "$IDLE_SECONDS"
  f1=$(ticks $OFF); n1=$(ticks $ON); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  say "no scrapes, ${IDLE_SECONDS}s:        OTLP off $(per_hour "$f1" "$f0" "$el") CPU-s/h rss_bytes=$(rss $OFF)   OTLP on $(per_hour "$n1" "$n0" "$el") CPU-s/h rss_bytes=$(rss $ON)"
  f0=$(ticks $OFF); n0=$(ticks $ON); t0=$(date +%s.%N)
  end=$(( $(date +%s) + RATE_SECONDS ))
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s -o /dev/null "http://127.0.0.1:$OPORT/metrics" & c1=$!
    curl -s -o /dev/null "http://127.0.0.1:$OPORT2/metrics" & c2=$!
    wait "$c1" "$c2"
    sleep 15
  done
  f1=$(ticks $OFF); n1=$(ticks $ON); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  say "scraped every 15 s, ${RATE_SECONDS}s: OTLP off $(per_hour "$f1" "$f0" "$el") CPU-s/h rss_bytes=$(rss $OFF)   OTLP on $(per_hour "$n1" "$n0" "$el") CPU-s/h rss_bytes=$(rss $ON)"
  say "threads: OTLP off $(awk '/Threads/ {print $2}' /proc/$OFF/status), on $(awk '/Threads/ {print $2}' /proc/$ON/status); receiver: $(tail -1 "$work/rx.out")"
  say "exports (OTLP on): $(curl -s "http://127.0.0.1:$OPORT2/metrics" | grep '^gravity_exporter_otlp_export' | tr '\n' ' ')"
  exit 0
fi

"$BIN" --web.listen-address=127.0.0.1:$OPORT --gravity.process-pattern "gravity --config=$work/config.toml" \
  --probe.interval 0s --log.level warn >"$work/ours.log" 2>&1 &
OURS=$!; pids+=($OURS)
prometheus-process-exporter -web.listen-address=127.0.0.1:$PPORT -procnames gravity >"$work/peer.log" 2>&1 &
PEER=$!; pids+=($PEER)
sleep 3

series() { curl -s "$1" | grep -vc '^#'; }

# At rest, same run, same double: CPU with no scrapes at all, then CPU per hour and RSS with
# both exporters scraped every 15 s (as Prometheus would), like the idle figures of issue 9.
measure_rest() { # label
  local label=$1 o0 p0 o1 p1 t0 t1 el
  sleep "$IDLE_WARMUP"
  o0=$(ticks $OURS); p0=$(ticks $PEER); t0=$(date +%s.%N)
  sleep "$IDLE_SECONDS"
  o1=$(ticks $OURS); p1=$(ticks $PEER); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  say "== $label: at rest"
  say "idle, no scrapes, ${IDLE_SECONDS}s:   gravity-exporter $(echo "$o1 $o0 $TCK $el" | awk '{printf "%.4f", ($1-$2)/$3*60/$4}') CPU-s/min   process-exporter $(echo "$p1 $p0 $TCK $el" | awk '{printf "%.4f", ($1-$2)/$3*60/$4}') CPU-s/min"
  o0=$(ticks $OURS); p0=$(ticks $PEER); t0=$(date +%s.%N)
  local end=$(( $(date +%s) + RATE_SECONDS ))
  while [ "$(date +%s)" -lt "$end" ]; do
    # both at the same moment, like one Prometheus scraping both targets (`wait` on the two
    # curls only: a bare `wait` would wait for the exporters too)
    curl -s -o /dev/null "http://127.0.0.1:$OPORT/metrics" & c1=$!
    curl -s -o /dev/null "http://127.0.0.1:$PPORT/metrics" & c2=$!
    wait "$c1" "$c2"
    sleep 15
  done
  o1=$(ticks $OURS); p1=$(ticks $PEER); t1=$(date +%s.%N)
  el=$(echo "$t1 $t0" | awk '{print $1-$2}')
  local ho hp
  ho=$(echo "$o1 $o0 $TCK $el" | awk '{printf "%.2f", ($1-$2)/$3*3600/$4}')
  hp=$(echo "$p1 $p0 $TCK $el" | awk '{printf "%.2f", ($1-$2)/$3*3600/$4}')
  say "scraped every 15 s, ${RATE_SECONDS}s: gravity-exporter $ho CPU-s/h rss_bytes=$(rss $OURS)   process-exporter $hp CPU-s/h rss_bytes=$(rss $PEER)   cpu ratio $(echo "$ho $hp" | awk '{ if ($2>0) printf "%.2f", $1/$2; else print "n/a" }')"
}

measure() { # label
  local label=$1
  # idle: a few scrapes, then 10 s without any
  "$SCRAPE" "http://127.0.0.1:$OPORT/metrics" 20 >/dev/null
  "$SCRAPE" "http://127.0.0.1:$PPORT/metrics" 20 >/dev/null
  sleep 10
  local rss_o rss_p; rss_o=$(rss $OURS); rss_p=$(rss $PEER)
  local c0 c1 lo lp co cp
  c0=$(cpu $OURS); lo=$("$SCRAPE" "http://127.0.0.1:$OPORT/metrics" "$N"); c1=$(cpu $OURS)
  co=$(echo "$c1 $c0 $N" | awk '{printf "%.3f", ($1-$2)*1000/$3}')
  c0=$(cpu $PEER); lp=$("$SCRAPE" "http://127.0.0.1:$PPORT/metrics" "$N"); c1=$(cpu $PEER)
  cp=$(echo "$c1 $c0 $N" | awk '{printf "%.3f", ($1-$2)*1000/$3}')
  say "== $label"
  say "gravity-exporter:  rss_bytes=$rss_o cpu_s_per_1000_scrapes=$co series=$(series http://127.0.0.1:$OPORT/metrics) $lo"
  say "process-exporter:  rss_bytes=$rss_p cpu_s_per_1000_scrapes=$cp series=$(series http://127.0.0.1:$PPORT/metrics) $lp"
  say "ratios:            rss=$(echo "$rss_o $rss_p" | awk '{printf "%.2f", $1/$2}') cpu=$(echo "$co $cp" | awk '{ if ($2>0) printf "%.2f", $1/$2; else print "n/a" }')"
}

measure_rest "baseline ($(ls /proc | grep -c '^[0-9]') processes on the host)"
[ "$ONLY_RATE" = 1 ] || measure "baseline ($(ls /proc | grep -c '^[0-9]') processes on the host)"

sleepers=$(( IDLE_WARMUP + IDLE_SECONDS + RATE_SECONDS + 900 ))
for _ in $(seq 1 1000); do sleep "$sleepers" & done
sleep 2
measure_rest "with 1000 extra idle processes ($(ls /proc | grep -c '^[0-9]') processes on the host)"
[ "$ONLY_RATE" = 1 ] || measure "with 1000 extra idle processes ($(ls /proc | grep -c '^[0-9]') processes on the host)"
pkill -P $$ sleep 2>/dev/null || true
[ "$ONLY_RATE" = 1 ] && exit 0

say "== text parser"
say "$(cargo bench --quiet --bench expfmt 2>/dev/null | grep -i 'expfmt')"
say "== log classifier"
say "$(cargo bench --quiet --bench logparse 2>/dev/null | grep -i 'logparse')"

# mtail on the same lines: a program that counts lines by level, like our classifier's first step
LOGN=400000
awk -v n=$LOGN 'BEGIN{} {a[NR]=$0} END{for(i=0;i<n;i++) print a[(i%NR)+1]}' tests/fixtures/gravity.log > "$work/big.log"
mkdir -p "$work/progs"
cat > "$work/progs/gravity.mtail" <<'MTAIL'
counter gravity_log_lines by level
counter gravity_errors by level, code
/"level":"(?P<level>[a-z]+)"/ {
  gravity_log_lines[$level]++
  /Error (?P<code>\d+):/ {
    gravity_errors[$level][$code]++
  }
}
MTAIL
MPORT=$(port)
{ TIMEFORMAT='%U %S'; time timeout 120 mtail --progs "$work/progs" --logs "$work/big.log" \
  --one_shot --one_shot_format prometheus --port "$MPORT" >"$work/mtail.out" 2>"$work/mtail.err" || true; } 2>"$work/mtail.time"
read -r mu ms < "$work/mtail.time"
mrate=$(echo "$LOGN $mu $ms" | awk '{printf "%.0f", $1/($2+$3)}')
say "mtail one-shot:    $LOGN lines, $(echo "$mu $ms" | awk '{print $1+$2}') CPU-s, $mrate lines per CPU-second"
