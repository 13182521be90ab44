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
    for pid in ${SSHD_PIDS:-}; do kill "$pid" 2>/dev/null || true; done
    [ -f "$RT/sshd/ssh_config" ] && ssh -F "$RT/sshd/ssh_config" -O exit bench 2>/dev/null || true
    for f in "$RT"/rt/sessions/*.json "$RT"/remote-*/sessions/*.json; do
        [ -e "$f" ] || continue
        pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
        [ -n "$pid" ] && kill -9 -- "-$pid" 2>/dev/null || true
    done
    for m in "$RT"/rt/manager.pid "$RT"/remote-*/manager.pid; do
        [ -f "$m" ] && kill -9 "$(cat "$m")" 2>/dev/null || true
    done
    rm -rf "$RT"
}
trap cleanup EXIT
# OpenSSH servers on 127.0.0.2-5 stand for four remote hosts (when sshd is installed): `bench`
# for the per-host measures, `fan1`-`fan3` for the fan-out. Each has its own runtime directory.
SSHD_PIDS=""
if [ -x /usr/sbin/sshd ]; then
    S="$RT/sshd"
    mkdir -p "$S" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$S/id"
    cp "$S/id.pub" "$S/authorized_keys"
    : > "$S/known_hosts"
    : > "$S/ssh_config"
    for host in bench:2 fan1:3 fan2:4 fan3:5; do
        alias=${host%:*}
        addr=127.0.0.${host#*:}
        ssh-keygen -q -t ed25519 -N '' -f "$S/host-$alias"
        PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr', 0)); print(s.getsockname()[1])")
        cat > "$S/sshd_config-$alias" <<CFG
ListenAddress $addr
Port $PORT
HostKey $S/host-$alias
AuthorizedKeysFile $S/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100
MaxSessions 100
LogLevel ERROR
SetEnv PATH=$BIN:$(dirname "$NU"):/usr/bin:/bin NU_SESSION_DIR=$RT/remote-$alias
CFG
        /usr/sbin/sshd -D -e -f "$S/sshd_config-$alias" 2> "$S/log-$alias" &
        SSHD_PIDS="$SSHD_PIDS $!"
        echo "[$addr]:$PORT $(cut -d' ' -f1,2 "$S/host-$alias.pub")" >> "$S/known_hosts"
        cat >> "$S/ssh_config" <<CFG
Host $alias
  HostName $addr
  Port $PORT
  User $(id -un)
  IdentityFile $S/id
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  ControlPath $S/cm-%C
CFG
        for _ in $(seq 100); do (echo > "/dev/tcp/$addr/$PORT") 2>/dev/null && break; sleep 0.05; done
    done
    export BENCH_SSH_CONFIG="$S/ssh_config"
fi
say "running on $(nproc) cores; nu $("$NU" --version)"
NU_SESSION_DIR="$RT/rt" NU_SESSION_HOST="$BIN/nu-session-host" BENCH_NU="$NU" \
    NU_SESSION_SSH_CONFIG="${BENCH_SSH_CONFIG:-}" SSH_AUTH_SOCK="" \
    "$NU" -n --plugins "[$BIN/nu_plugin_session]" scripts/bench.nu
