//! The nu-session host: what runs on the machine where sessions live.
//!
//! Layout:
//! - [`manager`]: the per-user daemon on `manager.sock` that creates, lists and removes sessions.
//! - [`worker`]: one process per session, embedding the Nushell engine and serving the session's
//!   socket: start-up and the idle timeout (`worker`), the connections' requests (`serving`:
//!   attach, disconnect, invoke, interrupt, acknowledgements), the invocations' thread
//!   (`evaluation`), the output's (`sending`), and the numbered output kept until acknowledged
//!   (`outbox`). Manager and worker share only [`records`].
//! - [`relay`]: `connect`, relaying stdin/stdout to a socket, for clients that run a command
//!   to reach the host (SSH without `direct-streamlocal`).
//! - [`records`]: a session's files (settings, socket, log, why it ended), written by its worker
//!   and read by the manager.
//! - [`notices`]: what a client's user should know about this host (logout ends sessions,
//!   sessions of other versions are here), sent in the manager's hello.
//! - [`config`]: the host's own settings (limits on what clients may ask for).
//! - [`conn`]: blocking framed connections, peer checks, and the process log.
//!
//! It depends on `nu-session-protocol` only; it knows nothing of clients or transports.

pub mod config;
pub mod conn;
pub mod manager;
pub mod notices;
pub mod records;
pub mod relay;
pub mod worker;

/// The name of the user this process runs as.
pub fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; we copy out at once, and the
    // host calls this from one thread at start-up.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}
