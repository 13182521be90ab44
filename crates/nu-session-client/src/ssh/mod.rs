//! The SSH transport (russh): one connection per host and settings, shared by every session
//! there; a channel per host connection.
//!
//! Layout:
//! - [`config`]: where and how to reach a host, read from OpenSSH itself (`ssh -G`).
//! - [`known_hosts`]: checking the host's key against known_hosts files.
//! - [`auth`]: logging in (agent, identity files, passphrases, keyboard-interactive,
//!   passwords), with [`Prompter`] asking the user on their terminal.
//! - [`connection`]: one authenticated connection (through `ProxyJump` hops), and its channels.
//! - [`host_program`]: a `nu-session-host` of this version on the host: found, or copied there.
//! - [`link`]: [`SshLink`], the connection a host's sessions share (reconnected when it drops),
//!   and [`Links`], the pool of them.

pub mod auth;
pub mod config;
pub mod connection;
pub mod host_program;
pub mod known_hosts;
pub mod link;

pub use auth::{Prompter, Secret};
pub use config::{DEFAULT_ALIVE_INTERVAL, SshOptions, SshTarget, StrictHostKeyChecking};
pub use connection::SshConnection;
pub use host_program::{DEPLOY_ENV, Deploy, DeployProgress};
pub use link::{LinkContext, Links, SshLink};

/// `ssh-keygen` with `args`, which must succeed: tests make their keys and certificates with
/// the real tool.
#[cfg(test)]
pub(crate) fn ssh_keygen(args: &[&str]) {
    let out = std::process::Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new ed25519 key pair without a passphrase at `path` (and `path.pub`).
#[cfg(test)]
pub(crate) fn new_test_key(path: &std::path::Path) {
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &path.to_string_lossy(),
    ]);
}
