#!/usr/bin/env bash
# Checks alerts/alertmanager.yml with amtool: the config is valid, and each severity is
# routed to its receiver (P0 pager, P1 urgent, P2 ticket, P3 digest; unknown -> ticket).
# Inhibition and delivery need a running Alertmanager: tests/alerts.rs starts one with
# this file (every inhibit rule, what it mutes and what not; every P3 reaching the digest).
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
# the alerts of issue 11, with a namespace as in Kubernetes
check pager  severity=P0 priority=critical namespace=prod job=gravity pipeline=orders alertname=GravityBinlogPurged
check pager  severity=P0 priority=critical namespace=prod job=gravity pipeline=orders alertname=GravityProbeDBUnreachable
check ticket severity=P2 priority=warning  namespace=prod job=gravity pipeline=orders alertname=GravitySlowCrashLoop
check digest severity=P3 priority=info     namespace=prod job=gravity pipeline=orders alertname=GravityStopped
check digest severity=P3 priority=info     namespace=prod job=gravity pipeline=orders alertname=GravityRestarted
# issue 23: the dark pipeline pages; a long DDL or transaction is a ticket
check pager  severity=P0 priority=critical namespace=prod job=gravity pipeline=orders alertname=GravityPipelineDark
check ticket severity=P2 priority=warning  namespace=prod job=gravity pipeline=orders alertname=GravityLongDDL
check ticket severity=P2 priority=warning  namespace=prod job=gravity pipeline=orders alertname=GravityLongTransaction

exit $fail
