#!/usr/bin/env bash
# Checks alerts/alertmanager.yml with amtool: the config is valid, and each severity is
# routed to its receiver (P0 pager, P1 urgent, P2 ticket, P3 digest; unknown -> ticket).
# Usage: alerts/tests/amtool-routes.sh   (from anywhere; needs amtool on PATH)
# tests/alerts.rs runs the same checks under `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
config=alertmanager.yml

amtool check-config "$config"

fail=0
check() { # expected-receiver label=value...
  local want=$1
  shift
  local got
  got=$(amtool config routes test --config.file="$config" "$@" 2>/dev/null)
  if [ "$got" = "$want" ]; then
    echo "ok   $* -> $got"
  else
    echo "FAIL $* -> $got (want $want)"
    fail=1
  fi
}

check pager  severity=P0 priority=critical pipeline=orders alertname=GravityDown
check urgent severity=P1 priority=critical pipeline=orders alertname=GravityReplicationLagHigh
check ticket severity=P2 priority=warning  pipeline=orders alertname=GravityQueueSaturated
check digest severity=P3 priority=info     pipeline=orders alertname=GravityDDLApplied
check ticket pipeline=orders alertname=SomethingWithoutSeverity

exit $fail
