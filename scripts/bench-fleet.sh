#!/usr/bin/env bash
# The fleet benchmark: 100 hosts — on loopback, 100 Unix users of one OpenSSH server (so 100 SSH
# connections, 100 managers and 100 workers, as a real fleet has) — opened by one new-session,
# then a one-liner on all of them, beside what a shell user does today in the same run:
# `xargs -P 32` running `ssh host nu -n -c '1 + 1'` over the same hosts. Prints a table.
# Needs root (it creates the users nsu001…nsu100 once per machine). Release build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

N="${FLEET_HOSTS:-100}"
ensure_pkg /usr/sbin/sshd openssh-server
ensure_pkg sa acct
ensure_test_users "$N"
NU="$(ensure_nu)"
build_release
RT="$(mktemp -d /tmp/nsfleet.XXXXXX)"
chmod 755 "$RT"
users() { for n in $(seq 1 "$N"); do printf 'nsu%03d\n' "$n"; done; }
cleanup() {
    [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null || true
    [ -n "${USERS_HELD:-}" ] && reset_users $(users) && { kill "$HOLDER_PID" 2>/dev/null || true; }
    rm -rf "$RT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# Hold the users, so that a test run at the same time does not use them too.
hold_test_users $(users) || exit 1
USERS_HELD=1

# One server; each user is a host. Their PATH has nu (for the baseline) and nothing of ours:
# each has the client's host program where a first contact would have copied it (a hard link,
# so the 100 copies cost no disk).
ssh-keygen -q -t ed25519 -N '' -f "$RT/id"
cp "$RT/id.pub" "$RT/authorized_keys"
chmod 644 "$RT/authorized_keys"
ssh-keygen -q -t ed25519 -N '' -f "$RT/host"
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.2', 0)); print(s.getsockname()[1])")
mkdir -p /run/sshd "$RT/nu-bin"
ln -f "$NU" "$RT/nu-bin/nu" 2>/dev/null || cp "$NU" "$RT/nu-bin/nu"
write_sshd_config "$RT/sshd_config" 127.0.0.2 "$PORT" "$RT/host" "$RT/authorized_keys" "$RT/nu-bin" 300
/usr/sbin/sshd -D -e -f "$RT/sshd_config" 2> "$RT/sshd.log" &
SSHD_PID=$!
echo "[127.0.0.2]:$PORT $(cut -d' ' -f1,2 "$RT/host.pub")" > "$RT/known_hosts"
: > "$RT/ssh_config"
n=0
for u in $(users); do
    n=$((n + 1))
    printf 'Host h%03d\n  HostName 127.0.0.2\n  Port %s\n  User %s\n' "$n" "$PORT" "$u" >> "$RT/ssh_config"
done
cat >> "$RT/ssh_config" <<CFG
Host *
  IdentityFile $RT/id
  IdentitiesOnly yes
  UserKnownHostsFile $RT/known_hosts
  StrictHostKeyChecking yes
CFG
reset_host_program --install $(users)
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.2/$PORT") 2>/dev/null && break; sleep 0.05; done

hosts="$(seq -f 'h%03g' 1 "$N")"
say "running on $(nproc) cores; nu $("$NU" --version); $N hosts"
# Where the CPU goes: process accounting (Debian's acct) records every process that ends, with
# its CPU time, in both runs.
ACCT=""
command -v accton >/dev/null 2>&1 && command -v sa >/dev/null 2>&1 && ACCT=1
[ -n "$ACCT" ] && touch "$RT/baseline.acct" "$RT/ours.acct"
# The baseline first, on hosts where nothing runs yet: a fresh ssh per host, 32 at a time.
reset_users $(users)
[ -n "$ACCT" ] && accton "$RT/baseline.acct"
start=$(date +%s.%N)
printf '%s\n' $hosts | xargs -P 32 -I{} ssh -F "$RT/ssh_config" {} nu -n -c "'1 + 1'" > "$RT/baseline.out"
end=$(date +%s.%N)
[ -n "$ACCT" ] && accton off
baseline_ok=$(grep -c '^2$' "$RT/baseline.out" || true)
baseline=$(python3 -c "print($end - $start)")
reset_users $(users)
FLEET_CONFIG="$RT/ssh_config" FLEET_BASELINE_SECS="$baseline" FLEET_BASELINE_OK="$baseline_ok" \
    FLEET_HOSTS="$N" FLEET_ACCT="${ACCT:+$RT/ours.acct}" NU_SESSION_SSH_CONFIG="$RT/ssh_config" \
    NU_SESSION_DIR="$RT/local" SSH_AUTH_SOCK="" \
    "$NU" -n --plugins "[$BIN/nu_plugin_session]" scripts/bench-fleet.nu
if [ -n "$ACCT" ]; then
    # CPU seconds by command (user + system), for processes that ended during each run. Ours
    # counts what ended while the sessions were opened (their workers and managers still run:
    # the table above has the machine's total).
    for run in baseline ours; do
        echo "CPU by command, $run:"
        sa -a -c --other-acct-file "$RT/$run.acct" 2>/dev/null |
            awk 'NR > 1 && $NF != "" { printf "  %-20s %6d processes %8.2f cpu-s\n", $NF, $1, ($5 + 0) * 60 }' | sort -k4 -nr | head -8
    done
fi
