#!/usr/bin/env bash
# Benchmarks: ours beside the baselines, measured in one run on this machine. Prints a table.
# Release build; sessions in a private runtime directory removed afterwards.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NU="$(ensure_nu)"
build_release
RT="$(mktemp -d /tmp/nsbench.XXXXXX)"
# The remote users (below) save markers here.
chmod 755 "$RT"
mkdir -m 1777 "$RT/markers"
# Each remote host is a Unix user of this machine, logging in as on a stock server: non-root,
# PAM on, nothing of ours preset. Their sessions live where they would on a real host.
HOST_USERS="bench:nsu091 fan1:nsu092 fan2:nsu093 fan3:nsu094 has:nsu095 netbench:nsu096"
remote_users() { for h in $HOST_USERS; do echo "${h#*:}"; done; }
host_user() { for h in $HOST_USERS; do [ "${h%:*}" = "$1" ] && echo "${h#*:}"; done; return 0; }
cleanup() {
    [ -f "$RT/sshd/ssh_config" ] && ssh -F "$RT/sshd/ssh_config" -O exit bench 2>/dev/null || true
    for pid in ${SSHD_PIDS:-}; do kill "$pid" 2>/dev/null || true; done
    for f in "$RT"/rt/p*/sessions/*.json; do
        [ -e "$f" ] || continue
        pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
        [ -n "$pid" ] && kill -9 -- "-$pid" 2>/dev/null || true
    done
    for m in "$RT"/rt/p*/manager.pid; do
        [ -f "$m" ] && kill -9 "$(cat "$m")" 2>/dev/null || true
    done
    [ -n "${USERS_HELD:-}" ] && reset_users $(remote_users) && { kill "$HOLDER_PID" 2>/dev/null || true; }
    if [ -n "${BENCH_VETH:-}" ]; then
        ip link del "$BENCH_VETH" 2>/dev/null || true
        ip netns del "$NETNS" 2>/dev/null || true
    fi
    rm -rf "$RT"
}
trap cleanup EXIT
# A killed run cleans up too (a stale namespace would take over the address of the next run's).
trap 'exit 130' INT TERM HUP
# OpenSSH servers on 127.0.0.2-6 stand for remote hosts (when sshd is installed and we are
# root): `bench` for the per-host measures (nobody has connected to it: the first session copies
# our host program there), `has` (has this build's host program, nothing running), `fan1`-`fan3`
# for the fan-out (the same). Their PATH has nu (for the baselines) and nothing of ours.
SSHD_PIDS=""
if [ -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ] && ensure_test_users 96; then
    # Hold the users, so that a test run at the same time does not use them too.
    hold_test_users $(remote_users) || exit 1
    USERS_HELD=1
    reset_users $(remote_users)
    S="$RT/sshd"
    mkdir -p "$S" /run/sshd "$RT/nu-bin"
    ln -f "$NU" "$RT/nu-bin/nu" 2>/dev/null || cp "$NU" "$RT/nu-bin/nu"
    ssh-keygen -q -t ed25519 -N '' -f "$S/id"
    cp "$S/id.pub" "$S/authorized_keys"
    chmod 644 "$S/authorized_keys"
    : > "$S/known_hosts"
    : > "$S/ssh_config"
    # `bench` has never seen us; the others have this build's host program.
    reset_host_program "$(host_user bench)"
    reset_host_program --install $(remote_users | grep -vx "$(host_user bench)")
    n=1
    for host in $HOST_USERS; do
        alias=${host%:*}
        user=${host#*:}
        [ "$alias" = netbench ] && continue
        n=$((n + 1))
        addr=127.0.0.$n
        ssh-keygen -q -t ed25519 -N '' -f "$S/host-$alias"
        PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr', 0)); print(s.getsockname()[1])")
        write_sshd_config "$S/sshd_config-$alias" "$addr" "$PORT" "$S/host-$alias" \
            "$S/authorized_keys" "$RT/nu-bin" 100 "AllowUsers $user"
        /usr/sbin/sshd -D -e -f "$S/sshd_config-$alias" 2> "$S/log-$alias" &
        SSHD_PIDS="$SSHD_PIDS $!"
        echo "[$addr]:$PORT $(cut -d' ' -f1,2 "$S/host-$alias.pub")" >> "$S/known_hosts"
        cat >> "$S/ssh_config" <<CFG
Host $alias
  HostName $addr
  Port $PORT
  User $user
  IdentityFile $S/id
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  ControlPath $S/cm-%C
CFG
        for _ in $(seq 100); do (echo > "/dev/tcp/$addr/$PORT") 2>/dev/null && break; sleep 0.05; done
    done
    export BENCH_SSH_CONFIG="$S/ssh_config"
    # One more server inside a network namespace (root only): `netbench`, whose link is cut and
    # restored to time reattaching. Keepalives every second notice the cut within ~3 s.
    NETNS="nsbench$$"
    VETH="nvb$$"
    if [ "$(id -u)" = 0 ] && ip netns add "$NETNS" 2>/dev/null; then
        ip link add "$VETH" type veth peer name "nvbi$$" netns "$NETNS"
        ip addr add 10.250.0.1/30 dev "$VETH"
        ip link set "$VETH" up
        ip -n "$NETNS" addr add 10.250.0.2/30 dev "nvbi$$"
        ip -n "$NETNS" link set "nvbi$$" up
        ip -n "$NETNS" link set lo up
        ssh-keygen -q -t ed25519 -N '' -f "$S/host-netbench"
        sed -e 's/^ListenAddress .*/ListenAddress 10.250.0.2/' -e 's/^Port .*/Port 22/' \
            -e "s|^HostKey .*|HostKey $S/host-netbench|" -e "s|^AllowUsers .*|AllowUsers $(host_user netbench)|" \
            "$S/sshd_config-bench" > "$S/sshd_config-netbench"
        ip netns exec "$NETNS" /usr/sbin/sshd -D -e -f "$S/sshd_config-netbench" 2> "$S/log-netbench" &
        SSHD_PIDS="$SSHD_PIDS $!"
        echo "10.250.0.2 $(cut -d' ' -f1,2 "$S/host-netbench.pub")" >> "$S/known_hosts"
        cat >> "$S/ssh_config" <<CFG
Host netbench
  HostName 10.250.0.2
  User $(host_user netbench)
  IdentityFile $S/id
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  ServerAliveInterval 1
  ServerAliveCountMax 2
CFG
        for _ in $(seq 100); do (echo > "/dev/tcp/10.250.0.2/22") 2>/dev/null && break; sleep 0.05; done
        export BENCH_VETH="$VETH" BENCH_NETNS="$NETNS" BENCH_NETLOG="$S/log-netbench"
    fi
fi
say "running on $(nproc) cores; nu $("$NU" --version)"
NU_SESSION_DIR="$RT/rt" BENCH_NU="$NU" BENCH_MARKERS="$RT/markers" \
    NU_SESSION_SSH_CONFIG="${BENCH_SSH_CONFIG:-}" BENCH_VETH="${BENCH_VETH:-}" BENCH_NETNS="${BENCH_NETNS:-}" \
    BENCH_NETLOG="${BENCH_NETLOG:-}" SSH_AUTH_SOCK="" \
    "$NU" -n --plugins "[$BIN/nu_plugin_session]" scripts/bench.nu
