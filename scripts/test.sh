#!/usr/bin/env bash
# Runs every test of gravity-exporter. Installs what the tests need when it is missing
# (Debian packages: prometheus for promtool and the server, prometheus-alertmanager for amtool,
# mariadb-server, chromium, openssl) and starts MariaDB when none is running.
# Usage: scripts/test.sh            (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# amtool and Alertmanager: tests/alerts.rs checks alerts/alertmanager.yml with both
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# openssl: certificates of the TLS tests against private MariaDB servers, the RSA key of the
# caching_sha2_password full-authentication test
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
# headless Chromium: tests/status_page.rs renders the status page and takes a screenshot
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# MariaDB: the connection probes and source checks test against a real server.
if ! mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1; then
  log "starting MariaDB"
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1 && break
    sleep 0.5
  done
fi

log "cargo fmt --check"
cargo fmt --all -- --check
# The whole workspace: the exporter and the gravity double (tests/gravity-double). The
# exporter's integration tests build the double's binary themselves when it is missing or
# stale (gravity_double::binary), so any subset of them also runs from a clean clone.
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# the shipped exporter alone, without the double's test-only features
cargo clippy -p gravity-exporter --lib --bins --quiet -- -D warnings
log "cargo test"
cargo test --workspace --all-targets --no-fail-fast
