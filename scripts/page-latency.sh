#!/usr/bin/env bash
# Measures how long each P0 takes from its fault's onset to its arrival at Alertmanager, with
# the rules, recording rules and routes exactly as shipped (alerts/*.yml unchanged), a real
# Prometheus scraping and evaluating every 15 s, a real Alertmanager, gravity-exporter built
# from this repo and the gravity double (tests/gravity-double) driven through its controls.
#
#   scripts/page-latency.sh faults          # every fault at once, one pipeline each; prints the table
#   scripts/page-latency.sh quiet [MIN]     # the quiet cases for MIN minutes (default 15); prints any P0
#
# Needs the Debian packages prometheus, prometheus-alertmanager and mariadb-server (a private
# MariaDB with binary logging is the pipelines' source and target), socat, curl, jq, python3.
# Binaries: $EXPORTER_BIN and $DOUBLE_BIN, else target/{release,debug}/gravity-exporter and
# gravity-double, built with `cargo build [--release] -p gravity-exporter -p gravity-double`
# when missing. Everything listens on 127.0.0.1; every process started is stopped at exit.
# Arrival is polled from Alertmanager's /api/v2/alerts once a second (the P0 route then adds
# its group_wait, 10 s, before the pager is notified).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-faults}
QUIET_MIN=${2:-15}
case "$MODE" in faults | quiet) ;; *)
  echo "usage: $0 faults | quiet [MINUTES]" >&2
  exit 2
  ;;
esac
[[ "$QUIET_MIN" =~ ^[0-9]+$ ]] || { echo "MINUTES must be a number" >&2; exit 2; }

for t in prometheus promtool curl jq socat python3 mariadb-install-db; do
  command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 2; }
done
AM_BIN=$(command -v prometheus-alertmanager || command -v alertmanager || true)
[ -n "$AM_BIN" ] || { echo "missing: prometheus-alertmanager" >&2; exit 2; }
MARIADBD=$(command -v mariadbd || ls /usr/sbin/mariadbd 2>/dev/null || true)
[ -n "$MARIADBD" ] || { echo "missing: mariadbd" >&2; exit 2; }

pick_bin() { # name -> path
  local n=$1 p
  for p in "$ROOT/target/release/$n" "${CARGO_TARGET_DIR:-$ROOT/target}/release/$n" \
    "$ROOT/target/debug/$n" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/$n"; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
}
EXPORTER_BIN=${EXPORTER_BIN:-$(pick_bin gravity-exporter)}
DOUBLE_BIN=${DOUBLE_BIN:-$(pick_bin gravity-double)}
if [ -z "$EXPORTER_BIN" ] || [ -z "$DOUBLE_BIN" ]; then
  echo "building gravity-exporter and gravity-double (debug)" >&2
  cargo build --quiet -p gravity-exporter -p gravity-double --bins
  EXPORTER_BIN=$(pick_bin gravity-exporter)
  DOUBLE_BIN=$(pick_bin gravity-double)
fi

W=$(mktemp -d /tmp/page-latency.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  # the supervisor loops' gravity children
  for f in "$W"/*/gravity.pid; do
    [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
wait_http() { # url tries
  local i
  for ((i = 0; i < $2; i++)); do curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0; sleep 0.5; done
  return 1
}

# --- MariaDB: the pipelines' source and target, with binary logging ---------------------
DB_PORT=$(free_port)
mkdir -p "$W/db"
mariadb-install-db --no-defaults --datadir="$W/db/data" --user=root --auth-root-authentication-method=normal >"$W/db/install.log" 2>&1
"$MARIADBD" --no-defaults --datadir="$W/db/data" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
  --socket="$W/db/sock" --pid-file="$W/db/pid" --log-bin=mysql-bin --server-id=1 --skip-name-resolve \
  --log-error="$W/db/err.log" &
PIDS+=($!)
sql() { mariadb --no-defaults -uroot --socket="$W/db/sock" -N -e "$1"; }
for ((i = 0; i < 120; i++)); do sql 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
sql "CREATE USER 'gx'@'%' IDENTIFIED BY 'gx-pw'; GRANT ALL ON *.* TO 'gx'@'%'; CREATE DATABASE IF NOT EXISTS shop;"
BINLOG_BASE=$(sql "SHOW MASTER STATUS" | awk '{print $1}' | sed 's/\.[0-9]*$//')
log "MariaDB on 127.0.0.1:$DB_PORT (binlog $BINLOG_BASE)"

# A TCP proxy in front of MariaDB (sets PROXY_PORT; not in $(...), which would wait for the
# background process): cutting it (cut_proxy) makes that endpoint refuse new connections and
# drops the open ones.
proxy() { # name
  PROXY_PORT=$(free_port)
  socat TCP-LISTEN:"$PROXY_PORT",bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:"$DB_PORT" >/dev/null 2>&1 &
  PIDS+=($!)
  echo "$!" >"$W/proxy-$1.pid"
}
cut_proxy() { # name: the listener and the children serving open connections
  local p
  p=$(cat "$W/proxy-$1.pid")
  # children first: once the listener is gone they belong to init
  pkill -TERM -P "$p" 2>/dev/null || true
  kill -TERM "$p" 2>/dev/null || true
  sleep 0.2
  pkill -TERM -P "$p" 2>/dev/null || true
}

# --- a pipeline: the double under a restart loop, and its exporter ----------------------
TARGETS=() # "pipeline=host:port" of the exporters Prometheus scrapes
config() { # name source-port target-port
  cat <<EOF
name = "$1"
version = "1.0"

[input]
type = "mysql"
mode = "stream"

[input.config.source]
host = "127.0.0.1"
port = $2
username = "gx"
password = "gx-pw"

[output]
type = "mysql"

[output.config.target]
host = "127.0.0.1"
port = $3
username = "gx"
password = "gx-pw"

[[output.config.routes]]
match-schema = "shop"
match-table = "*"
EOF
}

# start_gravity NAME [ENV=VALUE ...]: the double, restarted like systemd's Restart=always
# (at most 50 times), except after `touch $dir/no-restart`.
start_gravity() {
  local name=$1 d=$W/$1
  shift
  ln -sf "$DOUBLE_BIN" "$d/gravity"
  local gport
  gport=$(free_port)
  echo "$gport" >"$d/gravity.port"
  (
    trap 'kill -TERM "$(cat "$d/gravity.pid" 2>/dev/null)" 2>/dev/null; exit 0' TERM
    # exported here, not with env(1): `env ... gravity --config=...` would match the
    # exporter's process pattern for a moment before it execs gravity
    export GRAVITY_DOUBLE_RATE=50
    for kv in "$@"; do export "${kv?}"; done
    for ((n = 0; n < 50; n++)); do
      [ -e "$d/no-restart" ] && break
      "$d/gravity" --config="$d/config.toml" --http-addr=127.0.0.1:"$gport" \
        --log-file="$d/gravity.log" >>"$d/gravity.out" 2>&1 &
      echo $! >"$d/gravity.pid"
      wait $! || true
      sleep 0.3
    done
  ) &
  echo $! >"$d/loop.pid"
  PIDS+=($!)
  wait_http "http://127.0.0.1:$gport/metrics" 60 || log "$name: gravity double did not answer"
}
start_exporter() { # NAME -> registers the target
  local name=$1 d=$W/$1 port
  port=$(free_port)
  "$EXPORTER_BIN" --web.listen-address=127.0.0.1:"$port" \
    --gravity.process-pattern "/gravity --config=$d/config.toml( |\$)" >"$d/exporter-$port.log" 2>&1 &
  echo $! >"$d/exporter.pid"
  PIDS+=($!)
  echo "$port" >"$d/exporter.port"
  TARGETS+=("$name=127.0.0.1:$port")
  wait_http "http://127.0.0.1:$port/metrics" 60 || log "$name: exporter did not answer"
}
pipeline() { # NAME SOURCE_PORT TARGET_PORT [ENV=VALUE ...]
  local name=$1 d=$W/$1
  mkdir -p "$d"
  config "$name" "$2" "$3" >"$d/config.toml"
  shift 3
  start_gravity "$name" "$@"
  start_exporter "$name"
}
write_targets() { # the file_sd file: one target per exporter still listed
  local t first=1
  {
    echo "["
    for t in "${TARGETS[@]}"; do
      [ $first = 1 ] || echo ","
      first=0
      printf '{"targets":["%s"],"labels":{}}' "${t#*=}"
    done
    echo "]"
  } >"$W/targets.json.tmp"
  mv "$W/targets.json.tmp" "$W/targets.json"
}
unlist() { # NAME: the pipeline's exporter leaves service discovery (pod deleted)
  local t keep=()
  for t in "${TARGETS[@]}"; do [ "${t%%=*}" = "$1" ] || keep+=("$t"); done
  TARGETS=("${keep[@]}")
  write_targets
}
ctl() { curl -fsS -X POST --max-time 5 "http://127.0.0.1:$(cat "$W/$1/gravity.port")/_double/$2" >/dev/null || log "$1: control $2 failed"; }
gravity_pid() { cat "$W/$1/gravity.pid"; }

# --- Prometheus and Alertmanager, rules and routes as shipped -----------------------------
AM_PORT=$(free_port)
PROM_PORT=$(free_port)
cp alerts/alertmanager.yml "$W/alertmanager.yml"
cp alerts/gravity-recording.rules.yml alerts/gravity-alerts.rules.yml "$W/"
cat >"$W/prometheus.yml" <<EOF
global:
  scrape_interval: 15s
  evaluation_interval: 15s
rule_files:
  - $W/gravity-recording.rules.yml
  - $W/gravity-alerts.rules.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.0.1:$AM_PORT']
scrape_configs:
  - job_name: gravity-exporter
    file_sd_configs:
      - files: ['$W/targets.json']
        refresh_interval: 5s
EOF

start_stack() {
  write_targets
  "$AM_BIN" --config.file="$W/alertmanager.yml" --storage.path="$W/am" \
    --web.listen-address=127.0.0.1:"$AM_PORT" --cluster.listen-address= >"$W/am.log" 2>&1 &
  PIDS+=($!)
  prometheus --config.file="$W/prometheus.yml" --storage.tsdb.path="$W/prom" \
    --web.listen-address=127.0.0.1:"$PROM_PORT" >"$W/prom.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$AM_PORT/-/ready" 60 || { echo "Alertmanager did not start" >&2; exit 1; }
  wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 60 || { echo "Prometheus did not start" >&2; exit 1; }
  log "Prometheus 127.0.0.1:$PROM_PORT, Alertmanager 127.0.0.1:$AM_PORT, work dir $W"
}

# Alertmanager's P0 alerts, one line each: pipeline alertname state
p0s() {
  curl -fsS --max-time 5 "http://127.0.0.1:$AM_PORT/api/v2/alerts?filter=severity%3D%22P0%22" 2>/dev/null |
    jq -r '.[] | "\(.labels.pipeline) \(.labels.alertname) \(.status.state)"' 2>/dev/null | sort -u || true
}

if [ "$MODE" = faults ]; then
  proxy src
  SRC_PROXY=$PROXY_PORT
  proxy tgt
  TGT_PROXY=$PROXY_PORT
  pipeline down "$DB_PORT" "$DB_PORT"
  pipeline crash "$DB_PORT" "$DB_PORT"
  pipeline stall "$DB_PORT" "$DB_PORT"
  pipeline src "$SRC_PROXY" "$DB_PORT"
  pipeline tgt "$DB_PORT" "$TGT_PROXY"
  # gravity's position in the source's first binlog file, which never fills
  pipeline purge "$DB_PORT" "$DB_PORT" GRAVITY_DOUBLE_BINLOG_BASENAME="$BINLOG_BASE" \
    GRAVITY_DOUBLE_BINLOG_FIRST_INDEX=1 GRAVITY_DOUBLE_BINLOG_FILE_BYTES=1000000000000
  pipeline dark "$DB_PORT" "$DB_PORT"
  start_stack
  # Warm-up: every series has a few minutes of history (rate windows, the heartbeat's 15m
  # increase, last_over_time) as in a pipeline that has been running.
  log "warming up for 4 minutes"
  sleep 240

  declare -A ONSET
  # fault -> "pipeline alertname" of the page it must raise
  declare -A WANT=(
    [down]="down GravityDown" [crash]="crash GravityCrashLooping" [stall]="stall GravityPipelineStalled"
    [src]="src GravitySourceUnreachable" [tgt]="tgt GravityTargetUnreachable"
    [imminent]="purge GravityBinlogPurgeImminent" [purge]="purge GravityBinlogPurged" [dark]="dark GravityPipelineDark"
  )
  declare -A ARRIVED
  onset() { ONSET[$1]=$(now); log "onset $1"; }

  # The faults, all at once (each pipeline has its own; the binlog ones share the source
  # and run one after the other).
  touch "$W/down/no-restart"
  kill -KILL "$(gravity_pid down)"
  onset down
  ctl stall "fault?mode=stall"
  onset stall
  cut_proxy src
  onset src
  cut_proxy tgt
  onset tgt
  # the node of pipeline "dark" dies: gravity and its exporter at the same moment, the target stays listed
  touch "$W/dark/no-restart"
  kill -KILL "$(cat "$W/dark/loop.pid")" "$(gravity_pid dark)" "$(cat "$W/dark/exporter.pid")"
  onset dark
  # binlog: two new files, gravity 2 files behind in the oldest retained one (headroom 0)
  sql "FLUSH BINARY LOGS; FLUSH BINARY LOGS;"
  onset imminent
  # crash loop: a fatal exit, restarted 0.3 s later, three times
  onset crash
  for ((k = 0; k < 3; k++)); do
    old=$(gravity_pid crash)
    ctl crash "fault?mode=crash"
    for ((i = 0; i < 100; i++)); do
      [ "$(gravity_pid crash)" != "$old" ] && wait_http "http://127.0.0.1:$(cat "$W/crash/gravity.port")/metrics" 20 && break
      sleep 0.2
    done
  done

  poll() { # until every wanted alert arrived or LIMIT seconds after its onset
    local limit=$1 i p a f
    for ((i = 0; i < limit; i++)); do
      local all=1
      while read -r p a _; do
        [ -n "$p" ] || continue
        for f in "${!ONSET[@]}"; do
          if [ "${WANT[$f]}" = "$p $a" ] && [ -z "${ARRIVED[$f]:-}" ]; then
            ARRIVED[$f]=$(now)
            log "arrived $a for $p"
          fi
        done
      done < <(p0s)
      for f in "${!ONSET[@]}"; do [ -n "${ARRIVED[$f]:-}" ] || all=0; done
      [ $all = 1 ] && return 0
      sleep 1
    done
  }
  poll 150
  # purged: gravity's file goes from the source (the imminent page has arrived or timed out)
  sql "PURGE BINARY LOGS TO '$BINLOG_BASE.000003';"
  onset purge
  poll 150
  echo
  echo "| fault | page | onset to arrival at Alertmanager |"
  echo "| --- | --- | --- |"
  for p in down crash stall src tgt imminent purge dark; do
    case $p in
      down) f="gravity killed (SIGKILL, not restarted)" ;;
      crash) f="crash loop (3 fatal exits, restarted after 0.3 s)" ;;
      stall) f="pipeline stops (watermark, heartbeat, output frozen)" ;;
      src) f="source unreachable (connection refused)" ;;
      tgt) f="target unreachable (connection refused)" ;;
      imminent) f="binlog purge about to overtake the position (2 files behind, headroom 0)" ;;
      purge) f="binlog position purged at the source" ;;
      dark) f="gravity and its exporter lost at once (target still listed)" ;;
    esac
    if [ -n "${ARRIVED[$p]:-}" ]; then
      printf '| %s | %s | %.0f s |\n' "$f" "${WANT[$p]#* }" "$(echo "${ARRIVED[$p]} - ${ONSET[$p]}" | bc)"
    else
      printf '| %s | %s | not within 150 s |\n' "$f" "${WANT[$p]#* }"
    fi
  done
  echo
  echo "P0 alerts in Alertmanager at the end (pipeline alertname state; suppressed = muted by an inhibition):"
  p0s | sed 's/^/  /'
else
  pipeline healthy "$DB_PORT" "$DB_PORT"
  pipeline idle "$DB_PORT" "$DB_PORT"
  pipeline config "$DB_PORT" "$DB_PORT"
  pipeline stopped "$DB_PORT" "$DB_PORT"
  pipeline ddl "$DB_PORT" "$DB_PORT"
  pipeline txn "$DB_PORT" "$DB_PORT"
  pipeline replaced "$DB_PORT" "$DB_PORT"
  pipeline rolling "$DB_PORT" "$DB_PORT"
  start_stack
  log "warming up for 3 minutes"
  sleep 180
  ctl idle "fault?mode=idle"
  # a long DDL for the whole run
  ctl ddl "fault?mode=long_ddl"
  # a large transaction for the whole run: rows are written, the watermark stays where it is
  t0=$(date +%s)
  ctl txn "watermark?event=$t0&process=$t0"
  # a deliberate stop: gravity stopped by a signal, not restarted; the exporter stays
  touch "$W/stopped/no-restart"
  kill -TERM "$(gravity_pid stopped)"
  START=$(now)
  END=$(($(date +%s) + QUIET_MIN * 60))
  seen="$W/p0-seen"
  : >"$seen"
  step=0
  while [ "$(date +%s)" -lt "$END" ]; do
    case $step in
      60)
        # config change: gravity exits 0 and is restarted by its supervisor
        echo "# changed $(date)" >>"$W/config/config.toml"
        log "config change of pipeline config"
        ;;
      120)
        # pod replaced: both processes killed, the pod leaves service discovery, a new
        # pod (new address) comes up 20 s later
        touch "$W/replaced/no-restart"
        kill -KILL "$(cat "$W/replaced/loop.pid")" "$(gravity_pid replaced)" "$(cat "$W/replaced/exporter.pid")"
        unlist replaced
        log "pod of pipeline replaced killed"
        ;;
      140)
        rm -f "$W/replaced/no-restart"
        start_gravity replaced
        start_exporter replaced
        write_targets
        log "new pod of pipeline replaced"
        ;;
      180)
        # rolling update: both stopped by SIGTERM, the old pod leaves, the new one starts at once
        touch "$W/rolling/no-restart"
        kill -TERM "$(cat "$W/rolling/loop.pid")" "$(cat "$W/rolling/exporter.pid")"
        unlist rolling
        sleep 2
        rm -f "$W/rolling/no-restart"
        start_gravity rolling
        start_exporter rolling
        write_targets
        log "rolling update of pipeline rolling"
        ;;
    esac
    p0s | awk -v t="$(date -u +%H:%M:%S)" '{print t, $0}' >>"$seen"
    step=$((step + 5))
    sleep 5
  done
  echo
  printf 'quiet run: %s minutes from %s\n' "$QUIET_MIN" "$(date -u -d "@${START%.*}" +%H:%M:%S)"
  if [ -s "$seen" ]; then
    echo "P0 alerts seen in Alertmanager (time pipeline alertname state):"
    sort -k2,3 -u "$seen" | sed 's/^/  /'
  else
    echo "no P0 alert reached Alertmanager"
  fi
  echo "other alerts in Alertmanager at the end (pipeline alertname severity):"
  curl -fsS --max-time 5 "http://127.0.0.1:$AM_PORT/api/v2/alerts" |
    jq -r '.[] | "  \(.labels.pipeline) \(.labels.alertname) \(.labels.severity) \(.status.state)"' | sort -u
fi
