//! Harness for nu-session's end-to-end tests: real `nu` processes with the built plugin, real
//! host processes, real OpenSSH servers, each test in a sandbox of its own.
//!
//! Layout:
//! - [`sandbox`]: [`Sandbox`], one test's world: a private local runtime directory, `nu` runs,
//!   the client's SSH key and config; cleans up after itself.
//! - [`sshd`]: [`Sshd`], a real sshd on loopback (or in a network namespace) whose account is a
//!   non-root user with nothing preset, as on a real server.
//! - [`users`]: [`RemoteUser`], the pool of test accounts, leased one per simulated host.
//! - [`agent`]: [`Agent`], a real ssh-agent holding the keys a test gives it.
//! - [`client`]: [`UserClient`], `nu` run by a non-root user with its own `~/.ssh`.
//! - [`hostile`]: [`HostileHost`], a host played by the test that breaks the protocol on purpose.
//! - [`netns`]: [`NetNs`], a network namespace whose link can be cut and restored.
//! - [`terminal`]: [`Terminal`], a tmux terminal to read and type into; `script(1)` runs.
//! - [`process`]: processes and small helpers (alive, children, eventually, read_number).
//! - [`bin_dir`], [`nu_binary`]: where the tools under test are.
//!
//! The test command (`scripts/test.sh`) builds the binaries, provides `nu` and creates the test
//! users; run directly, set `NU_SESSION_TEST_NU` to a nu 0.115.x binary.

pub mod agent;
pub mod client;
pub mod hostile;
pub mod netns;
pub mod process;
pub mod sandbox;
pub mod sshd;
pub mod terminal;
pub mod users;

pub use agent::Agent;
pub use client::UserClient;
pub use hostile::HostileHost;
pub use netns::NetNs;
pub use process::{Running, alive, children_of, eventually, ints, read_number, shell_quote};
pub use sandbox::Sandbox;
pub use sshd::{Sshd, Stopped};
pub use terminal::Terminal;
pub use users::RemoteUser;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the built `nu_plugin_session` and `nu-session-host`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NU_SESSION_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    for name in ["nu_plugin_session", "nu-session-host"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing in {}: build the workspace first (scripts/test.sh does)",
            name,
            dir.display()
        );
    }
    dir.to_path_buf()
}

/// The `nu` to test with: `$NU_SESSION_TEST_NU`, else `nu` on PATH.
pub fn nu_binary() -> PathBuf {
    let nu = std::env::var_os("NU_SESSION_TEST_NU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nu"));
    let version = Command::new(&nu).arg("--version").output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).starts_with("0.115.") => nu,
        _ => panic!(
            "no nu 0.115.x at {}: run scripts/test.sh, or set NU_SESSION_TEST_NU",
            nu.display()
        ),
    }
}
