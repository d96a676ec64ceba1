#!/usr/bin/env bash
# Runs a RobustMQ benchmark: installs fio if it is missing (with apt-get, as root), builds the
# node binary and the bench in release mode, then runs
#   target/release/bench "$@"
# e.g.  bench/run.sh log-store --seconds 10
#       bench/run.sh replicated --seconds 10     (starts target/release/robustmq node processes)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fio >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing fio…" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq fio >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fio >/dev/null 2>&1; } \
            || echo "could not install fio; the bench falls back to its in-process O_DIRECT writer" >&2
    else
        echo "fio not found and cannot be installed here (needs root and apt-get); the bench falls back to its in-process O_DIRECT writer" >&2
    fi
fi

# The `replicated` mode runs the node binary found next to the bench binary. Both are built in
# one command and the bench is then run directly: a separate `cargo run -p bench` would resolve
# features for the bench alone and rebuild the crates it shares with the node.
cargo build --release -p robustmq -p bench
exec "${CARGO_TARGET_DIR:-target}/release/bench" "$@"
