#!/usr/bin/env bash
# Benchmarks: ours beside the baselines, measured in one run on this machine. Prints a table.
# Release build; sessions in a private runtime directory removed afterwards.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NU="$(ensure_nu)"
say "building (release)"
cargo build --release --quiet -p nu_plugin_session -p nu-session-host
BIN="$CARGO_TARGET_DIR/release"
RT="$(mktemp -d /tmp/nsbench.XXXXXX)"
cleanup() {
    for f in "$RT"/rt/sessions/*.json; do
        [ -e "$f" ] || continue
        pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
        [ -n "$pid" ] && kill -9 -- "-$pid" 2>/dev/null || true
    done
    [ -f "$RT/rt/manager.pid" ] && kill -9 "$(cat "$RT/rt/manager.pid")" 2>/dev/null || true
    rm -rf "$RT"
}
trap cleanup EXIT
say "running on $(nproc) cores; nu $("$NU" --version)"
NU_SESSION_DIR="$RT/rt" NU_SESSION_HOST="$BIN/nu-session-host" BENCH_NU="$NU" \
    "$NU" -n --plugins "[$BIN/nu_plugin_session]" scripts/bench.nu
