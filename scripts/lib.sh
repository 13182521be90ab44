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

# Prints the path of a nu $NU_VERSION binary, installing it into the cache when missing.
# Only the `plugin` feature: the tests need plugins and nothing else, and it builds in about
# half the time of the default feature set.
ensure_nu() {
    local root="$NU_SESSION_CACHE/nu-$NU_VERSION"
    local nu="$root/bin/nu"
    if [ -x "$nu" ] && "$nu" --version 2>/dev/null | grep -qx "$NU_VERSION"; then
        echo "$nu"
        return 0
    fi
    say "installing nu $NU_VERSION into $root (once per machine; takes a while on 2 cores)"
    mkdir -p "$root"
    # Thin LTO costs minutes and buys nothing for tests.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_TARGET_DIR="$NU_SESSION_CACHE/nu-build" \
        cargo install nu --version "$NU_VERSION" --locked --no-default-features \
        --features plugin --root "$root" >&2 || return 1
    echo "$nu"
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
