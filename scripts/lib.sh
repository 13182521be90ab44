# Shared by the scripts in this folder: where things are cached and how to get the tools the
# project needs. Sourced, not run.

# Everything built or downloaded once per machine lives here, outside the clone, so a fresh clone
# (CI's) reuses it.
NU_SESSION_CACHE="${NU_SESSION_CACHE:-$HOME/.cache/nu-session}"
NU_VERSION=0.115.1
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One cargo target dir per machine, shared by every clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$NU_SESSION_CACHE/target}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Whether $1 is a nu of the plugin protocol's minor version (0.115.x).
is_nu_0115() {
    [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qE '^0\.115\.[0-9]+$'
}

# Prints the path of a nu 0.115.x, in this order of preference:
# 1. the `nu` on PATH, if it is 0.115.x (the user's own: the plugin is registered with it);
# 2. a nu $NU_VERSION installed into the cache by an earlier run;
# 3. the official release binary from the npm registry (package `nushell`, whose per-platform
#    package `@nushell/<os>-<arch>` holds the binary): seconds;
# 4. building it with cargo (only the `plugin` feature): about 25 minutes on 2 cores.
ensure_nu() {
    local on_path
    on_path="$(command -v nu 2>/dev/null || true)"
    if [ -n "$on_path" ] && is_nu_0115 "$on_path"; then
        echo "$on_path"
        return 0
    fi
    local root="$NU_SESSION_CACHE/nu-$NU_VERSION"
    local nu="$root/bin/nu"
    if is_nu_0115 "$nu"; then
        echo "$nu"
        return 0
    fi
    mkdir -p "$root/bin"
    if install_nu_from_npm "$root/bin"; then
        echo "$nu"
        return 0
    fi
    say "building nu $NU_VERSION into $root (once per machine; takes a while on 2 cores)"
    # Thin LTO costs minutes and buys nothing for tests.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_TARGET_DIR="$NU_SESSION_CACHE/nu-build" \
        cargo install nu --version "$NU_VERSION" --locked --no-default-features \
        --features plugin --root "$root" >&2 || return 1
    echo "$nu"
}

# The official nu $NU_VERSION release binary, from the npm registry (`npm pack` checks the
# package's integrity against the registry). Returns non-zero when npm, the registry or a package
# for this platform is missing.
install_nu_from_npm() {
    local dest="$1" os arch
    command -v npm >/dev/null 2>&1 || return 1
    case "$(uname -s)" in
        Linux) os=linux ;;
        Darwin) os=darwin ;;
        *) return 1 ;;
    esac
    case "$(uname -m)" in
        x86_64 | amd64) arch=x64 ;;
        aarch64 | arm64) arch=arm64 ;;
        armv7l) arch=arm ;;
        riscv64) arch=riscv64 ;;
        *) return 1 ;;
    esac
    local package="@nushell/$os-$arch@$NU_VERSION" work
    say "installing nu $NU_VERSION from the npm registry ($package)"
    work="$(mktemp -d)"
    if (cd "$work" && npm pack --silent "$package" >/dev/null 2>&1) &&
        tar -xzf "$work"/*.tgz -C "$work" package/bin/nu &&
        is_nu_0115 "$work/package/bin/nu"; then
        mv "$work/package/bin/nu" "$dest/nu"
        rm -rf "$work"
        return 0
    fi
    rm -rf "$work"
    say "the npm registry has no usable $package; building nu instead"
    return 1
}

# Installs Debian packages when the command they provide is missing.
ensure_pkg() {
    local cmd="$1" pkg="$2"
    if command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ]; then return 0; fi
    say "installing $pkg (for $cmd)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >&2
}

# The Unix users the end-to-end tests and the fleet benchmark log in to over SSH, standing for
# the accounts of remote computers: nsu001 … nsu$1 (default 100), non-root, with a home and a
# login shell and nothing of nu-session preset. Created once per machine (needs root).
ensure_test_users() {
    local count="${1:-100}" n name missing=0
    for n in $(seq 1 "$count"); do
        id "$(printf 'nsu%03d' "$n")" >/dev/null 2>&1 || missing=$((missing + 1))
    done
    [ "$missing" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "cannot create the $missing missing test users (nsu001 to nsu$(printf '%03d' "$count")): this needs root"
        return 1
    fi
    say "creating $missing test users (nsu001 to nsu$(printf '%03d' "$count"); once per machine)"
    for n in $(seq 1 "$count"); do
        name="$(printf 'nsu%03d' "$n")"
        id "$name" >/dev/null 2>&1 && continue
        useradd --create-home --shell /bin/bash "$name"
        # Not locked (sshd refuses locked accounts without PAM), but no password either.
        usermod --password '*' "$name"
    done
}

# Holds the locks of test users "$@" (the ones the end-to-end tests take, so a test run and a
# benchmark never share a user) in a helper process of its own, so that nothing started later
# inherits them; sets HOLDER_PID. Fails, saying so, when a test run holds one.
hold_test_users() {
    mkdir -p /tmp/nu-session-test-users
    local out answer
    out="$(mktemp)"
    python3 -c '
import fcntl, sys, time
for user in sys.argv[1:]:
    lock = open(f"/tmp/nu-session-test-users/{user}", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"{user} is in use", flush=True)
        sys.exit(1)
    globals().setdefault("held", []).append(lock)
print("held", flush=True)
while True:
    time.sleep(3600)
' "$@" > "$out" 2>&1 < /dev/null &
    HOLDER_PID=$!
    for _ in $(seq 200); do [ -s "$out" ] && break; sleep 0.05; done
    answer="$(head -1 "$out")"
    rm -f "$out"
    if [ "$answer" != held ]; then
        kill "$HOLDER_PID" 2>/dev/null || true
        say "${answer:-the test users could not be held}: a test run is using them; try again later"
        return 1
    fi
}

# Builds the plugin and the host program (release); sets BIN to where they are.
build_release() {
    say "building nu_plugin_session and nu-session-host (release)"
    cargo build --release --quiet -p nu_plugin_session -p nu-session-host
    BIN="$CARGO_TARGET_DIR/release"
}

# Kills every process of the users "$@" and removes their runtime directories (root only).
reset_users() {
    local u
    for u in "$@"; do pkill -KILL -u "$u" 2>/dev/null || true; done
    for u in "$@"; do rm -rf "/tmp/nu-session-$(id -u "$u")"; done
}

# Forgets the copies of the host program clients made for users "$@"; with --install, puts
# $BIN's in place for them as a first session would have copied it (a hard link: no disk).
reset_host_program() {
    local install="" u home version_dir
    [ "${1:-}" = --install ] && { install=1; shift; }
    version_dir="$("$BIN/nu-session-host" --version | cut -d' ' -f2)-$(sha256sum "$BIN/nu-session-host" | cut -c1-16)"
    for u in "$@"; do
        home="$(getent passwd "$u" | cut -d: -f6)"
        rm -rf "$home/.local/share/nu-session/host"
        [ -n "$install" ] || continue
        # As the user: directories a root-made ~/.local would make unwritable for them.
        runuser -u "$u" -- mkdir -p "$home/.local/share/nu-session/host/$version_dir"
        ln -f "$BIN/nu-session-host" "$home/.local/share/nu-session/host/$version_dir/nu-session-host"
    done
}


# Writes an sshd config for a benchmark: `write_sshd_config FILE ADDR PORT HOSTKEY AUTHKEYS
# PATHDIR LIMIT [LINE...]`: public-key logins of non-root users through PAM, PATH set to PATHDIR
# first (where the benchmark's nu is), LIMIT for MaxStartups and MaxSessions, and more LINEs.
write_sshd_config() {
    local file=$1 addr=$2 port=$3 hostkey=$4 authkeys=$5 pathdir=$6 limit=$7
    shift 7
    {
        printf '%s\n' "ListenAddress $addr" "Port $port" "HostKey $hostkey" \
            "AuthorizedKeysFile $authkeys" "PidFile none" "UsePAM yes" "StrictModes no" \
            "PasswordAuthentication no" "KbdInteractiveAuthentication no" "PermitRootLogin no" \
            "MaxStartups $limit" "MaxSessions $limit" "LogLevel ERROR" \
            "SetEnv PATH=$pathdir:/usr/local/bin:/usr/bin:/bin"
        [ $# -gt 0 ] && printf '%s\n' "$@"
    } > "$file"
}
