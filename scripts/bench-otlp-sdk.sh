#!/usr/bin/env bash
# OTLP metrics: today's own path (src/otlp: the store's families converted to OTLP messages,
# sent over tonic) against opentelemetry-otlp with the SDK's MeterProvider and observable
# instruments reading the same state (the trial, benches/otlp-sdk-trial), in the same run:
# one gravity double, two OTLP/gRPC receivers (`gravity-double otlp-receiver`, one per
# exporter), the release `gravity-exporter` and the release trial with the same flags.
# After WARMUP seconds it measures both over SECONDS: CPU seconds per hour (utime + stime
# from /proc/PID/stat), VmRSS at the end and VmHWM (peak), threads; then the release binary
# sizes and the lines of code of each OTLP metrics path.
# Usage: scripts/bench-otlp-sdk.sh
#   SECONDS_RUN=300   the measured window (default 300 s)
#   WARMUP=30         seconds before the window (default 30 s)
#   INTERVAL=1s       --otlp.interval of both (default 1s)
#   JOBS=1            cargo build jobs (default 1)
# Results go to stdout and target/bench/otlp-sdk.txt (docs/performance.md, "OTLP: own path
# vs opentelemetry-otlp").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_RUN=${SECONDS_RUN:-300}
WARMUP=${WARMUP:-30}
INTERVAL=${INTERVAL:-1s}
JOBS=${JOBS:-1}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/bench; mkdir -p "$OUT"; : > "$OUT/otlp-sdk.txt"
say() { echo "$*" | tee -a "$OUT/otlp-sdk.txt"; }

# the shipped exporter, the double (debug, as in bench-vs-peers.sh: its speed does not
# matter), and the trial: a crate of its own (not a workspace member) built into the same
# target directory
cargo build -j "$JOBS" --release --quiet -p gravity-exporter --bin gravity-exporter
cargo build -j "$JOBS" --quiet -p gravity-double --bin gravity-double
(cd benches/otlp-sdk-trial && CARGO_TARGET_DIR=$TARGET cargo build -j "$JOBS" --release --quiet --locked)
OWN=$TARGET/release/gravity-exporter
SDK=$TARGET/release/otlp-sdk-trial
DOUBLE=$TARGET/debug/gravity-double
TCK=$(getconf CLK_TCK)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
status() { awk -v k="$2:" '$1 == k {print $2*1024}' "/proc/$1/status"; }
threads() { awk '/^Threads/ {print $2}' "/proc/$1/status"; }
per_hour() { echo "$1 $2 $TCK $3" | awk '{printf "%.2f", ($1-$2)/$3*3600/$4}'; }
mb() { echo "$1" | awk '{printf "%.2f MB", $1/1e6}'; }

# Code lines (not blank, not only a comment) of a Rust file before its `#[cfg(test)]`, or
# of the named top-level items only (from `fn NAME` / `struct NAME` to the first `}` at the
# start of a line).
loc() { awk '/^#\[cfg\(test\)\]/ {exit} /^[[:space:]]*$/ {next} /^[[:space:]]*\/\// {next} {n++} END {print n+0}' "$1"; }
loc_items() { # file name...
  local f=$1; shift
  awk -v names="$*" '
    BEGIN { split(names, a, " "); for (i in a) want[a[i]] = 1 }
    !on && match($0, /^(pub )?(async )?(fn|struct) [A-Za-z_]+/) {
      w = substr($0, RSTART, RLENGTH); sub(/.* /, "", w); if (w in want) on = 1
    }
    on && !/^[[:space:]]*$/ && !/^[[:space:]]*\/\// { n++ }
    on && /^}/ { on = 0 }
    END { print n+0 }' "$f"
}

GPORT=$(port)
ln -s "$DOUBLE" "$work/gravity"
cp tests/fixtures/configs/mysql2mysql-stream.toml "$work/config.toml"
GRAVITY_DOUBLE_RATE=500 "$work/gravity" --config="$work/config.toml" --http-addr=127.0.0.1:$GPORT --log-file="$work/gravity.log" >/dev/null 2>&1 &
pids+=($!)
receiver() { # name -> endpoint
  "$DOUBLE" otlp-receiver grpc 127.0.0.1:0 >"$work/rx-$1.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q '^listening' "$work/rx-$1.out" 2>/dev/null && break; sleep 0.1; done
  awk '/^listening/ {print $2; exit}' "$work/rx-$1.out"
}
EP_OWN=$(receiver own)
EP_SDK=$(receiver sdk)
sleep 1

common=(--gravity.process-pattern "gravity --config=$work/config.toml" --probe.interval 0s --log.level warn
        --otlp.protocol grpc --otlp.interval "$INTERVAL")
PORT_OWN=$(port); PORT_SDK=$(port)
"$OWN" --web.listen-address=127.0.0.1:$PORT_OWN "${common[@]}" --otlp.endpoint "$EP_OWN" >"$work/own.log" 2>&1 &
P_OWN=$!; pids+=($P_OWN)
"$SDK" --web.listen-address=127.0.0.1:$PORT_SDK "${common[@]}" --otlp.endpoint "$EP_SDK" >"$work/sdk.log" 2>&1 &
P_SDK=$!; pids+=($P_SDK)

say "== OTLP metrics: own path vs opentelemetry-otlp ($(date -u +%F), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg); interval $INTERVAL, warm-up ${WARMUP}s, window ${SECONDS_RUN}s)"
sleep "$WARMUP"
o0=$(ticks $P_OWN); s0=$(ticks $P_SDK); t0=$(date +%s.%N)
sleep "$SECONDS_RUN"
o1=$(ticks $P_OWN); s1=$(ticks $P_SDK); t1=$(date +%s.%N)
el=$(echo "$t1 $t0" | awk '{print $1-$2}')
sleep 11 # one more report of each receiver
row() { # label pid binary
  say "$1: cpu $(per_hour "$5" "$4" "$el") CPU-s/h  VmRSS $(mb "$(status "$2" VmRSS)")  VmHWM $(mb "$(status "$2" VmHWM)")  threads $(threads "$2")  binary $(stat -c %s "$3") B"
}
row "own path (gravity-exporter)" "$P_OWN" "$OWN" "$o0" "$o1"
row "opentelemetry-otlp (trial)  " "$P_SDK" "$SDK" "$s0" "$s1"
say "receiver of the own path: $(tail -1 "$work/rx-own.out")"
say "receiver of the trial:    $(tail -1 "$work/rx-sdk.out")"
say "exporter log lines (warn and above): own $(wc -l < "$work/own.log"), trial $(wc -l < "$work/sdk.log")"
own_mod=$(loc_items src/otlp/mod.rs ResourcePart metrics_request fleet_parts merge_families export_metrics metrics_loop)
own_conv=$(loc_items src/otlp/convert.rs unit_of Times attrs number count metric passthrough_families)
reused=$(loc_items src/otlp/convert.rs unit_of passthrough_families)
trial=$(loc benches/otlp-sdk-trial/src/sdk_metrics.rs)
say "lines of code of the metrics path: own $((own_mod + own_conv)) (src/otlp/mod.rs $own_mod: ResourcePart metrics_request fleet_parts merge_families export_metrics metrics_loop; src/otlp/convert.rs $own_conv: all but kv)"
say "                                   trial $((trial + reused)) (sdk_metrics.rs $trial, and convert.rs' unit_of and passthrough_families $reused, reused); its main.rs (wiring) $(loc benches/otlp-sdk-trial/src/main.rs)"
