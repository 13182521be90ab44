#!/usr/bin/env bash
# The main job: build the plugin and host (release), register the plugin with the nu 0.115.x on
# PATH (installing nu 0.115.1 only when there is none: the official release binary from the npm
# registry, building it only as a last resort), and take a short tour of a local session.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NU="$(ensure_nu)"
say "using $NU ($("$NU" --version))"
build_release
PLUGIN="$BIN/nu_plugin_session"
say "registering $PLUGIN with $NU"
"$NU" -c "plugin add '$PLUGIN'"
say "the tour (scripts/tour.nu)"
"$NU" scripts/tour.nu
say "done: in nu, run \`plugin use session\` (or restart nu) and try \`new-session\`"
