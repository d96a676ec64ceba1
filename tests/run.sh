#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
# On a fresh Debian machine, as root, it installs what the suites need, then runs every suite,
# printing `suite NAME: ok|FAILED (Ns)` for each and finally `N passed, N failed`. It exits
# non-zero if any suite fails. A warm machine skips apt and pip entirely.
#
#   set-up   Debian packages (kcat, mosquitto-clients, fio, python3-venv when needed) and a
#            Python venv in .venv/ with the real protocol clients of tests/requirements.txt
#   fmt      cargo fmt --all -- --check
#   clippy   cargo clippy --workspace --all-targets -- -D warnings
#   test     cargo test --workspace
#   kafka-fixtures
#            record batches freshly encoded by kafka-python (every codec), decoded and stored
#            by log-store: tests/fixtures/make_kafka_batches.py + log-store/tests/kafka_client_batches.rs
#   jepsen   two short Jepsen runs, random seeds (printed; a failure replays with them), the
#            histories and reports in target/jepsen/: kafka-queue (librdkafka and kafka-python
#            clients) on 3 nodes in network namespaces under kill, pause, partition and full
#            (a disk fills), 40 s;
#            then the native workload on 3 nodes behind the fault proxies under delay, loss,
#            clock (libfaketime), bitflip and truncate, 25 s
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/requirements.txt"

if [[ -n "${CI:-}" ]]; then
    export CARGO_TERM_COLOR=never
fi
export DEBIAN_FRONTEND=noninteractive

passed=0
failed=0
results=()
phase="set-up"
finished=0
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/robustmq-tests.XXXXXX")

on_exit() {
    local rc=$?
    rm -rf "$TMP_DIR"
    if [[ $finished -ne 1 ]]; then
        # Set-up (or the script itself) failed before the suites could report.
        echo "run.sh: stopped during $phase (exit $rc)" >&2
        echo "$passed passed, $((failed + 1)) failed"
    fi
}
trap on_exit EXIT

log() { echo "==> $*"; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        echo "run.sh: need root to run: $*" >&2
        return 1
    fi
}

# --- set-up: Debian packages -------------------------------------------------------------------

install_debian_packages() {
    local missing=() want_kcat=0
    if ! command -v kcat >/dev/null 2>&1 && ! command -v kafkacat >/dev/null 2>&1; then
        want_kcat=1
    fi
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    command -v fio >/dev/null 2>&1 || missing+=(fio)
    [[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || missing+=(faketime)
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif [[ ! -x "$VENV/bin/python" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if [[ $want_kcat -eq 0 && ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    log "apt-get update"
    as_root apt-get update -qq
    if [[ $want_kcat -eq 1 ]]; then
        # Debian renamed kafkacat to kcat (bookworm has both names); take whichever exists.
        if apt-cache show kcat >/dev/null 2>&1; then
            missing+=(kcat)
        else
            missing+=(kafkacat)
        fi
    fi
    log "apt-get install ${missing[*]}"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- set-up: Python venv with the real protocol clients ----------------------------------------

venv_is_complete() {
    "$VENV/bin/python" -c 'import kafka, confluent_kafka, paho.mqtt.client, pika, snappy, lz4.frame, zstandard' \
        >/dev/null 2>&1
}

prepare_venv() {
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    local marker="$VENV/.robustmq-requirements.sha256" want
    want=$({ "$VENV/bin/python" --version; cat "$REQUIREMENTS"; } | sha256sum | cut -d' ' -f1)
    if [[ "$(cat "$marker" 2>/dev/null)" == "$want" ]] && venv_is_complete; then
        return 0
    fi
    log "pip install -r tests/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
    venv_is_complete
    echo "$want" >"$marker"
}

# --- suites ------------------------------------------------------------------------------------

run_suite() {
    local name=$1
    shift
    local start=$SECONDS status
    phase="suite $name"
    log "suite $name: $*"
    if "$@"; then
        status=ok
        passed=$((passed + 1))
    else
        status=FAILED
        failed=$((failed + 1))
    fi
    results+=("suite $name: $status ($((SECONDS - start))s)")
    echo "${results[-1]}"
}

kafka_fixture_suite() {
    local dir="$TMP_DIR/kafka-fixtures"
    "$VENV/bin/python" "$ROOT/tests/fixtures/make_kafka_batches.py" "$dir" &&
        ROBUSTMQ_KAFKA_FIXTURES="$dir" cargo test -p log-store --test kafka_client_batches
}

setup_start=$SECONDS
install_debian_packages
prepare_venv
echo "set-up: ok ($((SECONDS - setup_start))s)"

run_suite fmt cargo fmt --all -- --check
run_suite clippy cargo clippy --workspace --all-targets -- -D warnings
run_suite test cargo test --workspace
run_suite kafka-fixtures kafka_fixture_suite

jepsen_suite() {
    local target="${CARGO_TARGET_DIR:-target}" queue_seed=$((RANDOM * 32768 + RANDOM)) proxy_seed=$((RANDOM * 32768 + RANDOM))
    cargo build -p robustmq -p jepsen &&
        ROBUSTMQ_PYTHON="$VENV/bin/python" "$target/debug/jepsen" --workload kafka-queue \
            --nemesis kill,pause,partition,full --nodes 3 --time-limit 40 --seed "$queue_seed" \
            --robustmq "$target/debug/robustmq" --results "$target/jepsen/$queue_seed" &&
        "$target/debug/jepsen" --workload native --nemesis delay,loss,clock,bitflip,truncate --network proxy \
            --nodes 3 --time-limit 25 --seed "$proxy_seed" \
            --robustmq "$target/debug/robustmq" --results "$target/jepsen/$proxy_seed"
}
run_suite jepsen jepsen_suite

echo
echo "Summary:"
printf '%s\n' "${results[@]}"
finished=1
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
