#!/usr/bin/env bash
# Wraps the shipped Prometheus rule files (alerts/*.rules.yml) into Prometheus Operator
# PrometheusRule objects, written to stdout:
#
#   docker/kubernetes/prometheusrules.sh [--namespace NS] [--label key=value ...] | kubectl apply -f -
#
# A PrometheusRule's spec holds the same `groups:` as a rule file, so each file is indented
# under `spec:` unchanged (comments and block scalars keep their meaning). One object per
# file, named gravity-<file stem>. Apply both: the alerts need the recording rules.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rules_dir="$here/../../alerts"
namespace=""
labels=()
while (($#)); do
  case $1 in
    --namespace) namespace=$2; shift 2 ;;
    --namespace=*) namespace=${1#*=}; shift ;;
    --label) labels+=("$2"); shift 2 ;;
    --label=*) labels+=("${1#*=}"); shift ;;
    --rules-dir) rules_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "prometheusrules.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

shopt -s nullglob
files=("$rules_dir"/*.rules.yml)
if ((${#files[@]} == 0)); then
  echo "prometheusrules.sh: no *.rules.yml in $rules_dir" >&2
  exit 1
fi

for f in "${files[@]}"; do
  stem=$(basename "$f" .rules.yml)
  name=${stem#gravity-}
  printf -- '---\n'
  printf 'apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n'
  printf '  name: gravity-%s\n' "$name"
  [[ -n $namespace ]] && printf '  namespace: %s\n' "$namespace"
  printf '  labels:\n    app.kubernetes.io/name: gravity-exporter\n'
  for l in "${labels[@]}"; do
    k=${l%%=*}; v=${l#*=}
    printf '    %s: "%s"\n' "$k" "$v"
  done
  printf 'spec:\n'
  # indent every non-empty line by two spaces; empty lines stay empty
  sed -e 's/^\(.\)/  \1/' "$f"
done
