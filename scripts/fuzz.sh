#!/usr/bin/env bash
# Runs the fuzz harnesses of tests/fuzz.rs, one parser after the other, in release mode
# with overflow checks and debug assertions on (so an arithmetic overflow is a crash, as in
# a debug build), FUZZ_CASES cases per parser (default 1,000,000). Not part of CI's
# default run: `cargo test` runs the same harnesses with 2,000 cases each.
#
#   scripts/fuzz.sh                        # every harness, 1M cases each
#   FUZZ_CASES=100000 scripts/fuzz.sh fuzz_expfmt fuzz_status_json
#   FUZZ_SEED=42 scripts/fuzz.sh           # another deterministic stream of inputs
#
# Prints one FUZZ-RESULT line per parser (cases, seconds) and keeps the full output in
# target/fuzz-report.txt. A crashing input is saved under target/fuzz-crashes/, the
# harness's message names the file and the seed, the other harnesses still run, and the
# script exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

export FUZZ_CASES="${FUZZ_CASES:-1000000}"
# The release profile, without its fat LTO (build time only) and with the checks on.
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
    harnesses=(
        fuzz_status_json
        fuzz_gravity_config
        fuzz_log_records
        fuzz_proc_files
        fuzz_cgroup_files
        fuzz_net_tcp
        fuzz_web_config
        fuzz_kafka_reply
        fuzz_kafka_topic_reply
        fuzz_mongo_reply
        fuzz_expfmt
    )
fi

cargo test --release -p gravity-exporter --test fuzz --no-run
report=target/fuzz-report.txt
failed=()
: >"$report"
echo "FUZZ_CASES=$FUZZ_CASES FUZZ_SEED=${FUZZ_SEED:-default} $(date -u +%FT%TZ) $(nproc) cpus" | tee -a "$report"
for h in "${harnesses[@]}"; do
    start=$(date +%s)
    before=$(wc -l <"$report")
    if ! cargo test --release -p gravity-exporter --test fuzz -- --exact "$h" --nocapture \
        --test-threads=1 >>"$report" 2>&1; then
        tail -n +"$((before + 1))" "$report" | grep -E "panicked|input saved" | head -5
        echo "fuzz: $h FAILED after $(($(date +%s) - start)) s (full output: $report)" >&2
        failed+=("$h")
        continue
    fi
    tail -n +"$((before + 1))" "$report" | grep "FUZZ-RESULT" || true
done
echo "all FUZZ-RESULT lines:"
grep "FUZZ-RESULT" "$report" || true
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]}" >&2
    exit 1
fi
