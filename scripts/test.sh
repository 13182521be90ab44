#!/usr/bin/env bash
# Runs every test: unit tests, in-process plugin tests (every `help` example), and the end-to-end
# tests that drive a real nu 0.115 with the built plugin and real host processes.
# Installs what the tests need when it is missing (nu 0.115.1, cached outside the clone).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

ensure_pkg /usr/sbin/sshd openssh-server
ensure_pkg ssh-keygen openssh-client
ensure_pkg tmux tmux
ensure_pkg script bsdutils
ensure_test_users 100
NU="$(ensure_nu)"
say "using $NU ($("$NU" --version))"
say "building the workspace (target dir: $CARGO_TARGET_DIR)"
cargo build --workspace --bins --quiet
say "running the tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
NU_SESSION_TEST_NU="$NU" cargo test --workspace --lib --bins --tests --quiet --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
