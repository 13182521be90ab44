//! Talking to nu-session hosts from Rust, with no Nushell command code: the plugin is a thin layer
//! over this crate.
//!
//! Layout:
//! - [`computer`]: computer names (`user@host:port`, `[v6]:port`), validated before use.
//! - [`ssh`]: the SSH transport: OpenSSH configuration, host keys, authentication, channels,
//!   the host program (found or copied there), the shared links.
//! - [`transport`]: how bytes reach a host's manager and workers: this machine's Unix sockets
//!   (starting the manager on demand) or SSH, and the hello on every connection.
//! - [`host`]: [`Host`], one machine's sessions: create, list, remove, attach.
//! - [`session`]: [`SessionHandle`], an attached session: invoke with streaming results,
//!   interrupt, disconnect, receive; split by job: the consumers ([`Call`], [`Receive`]) and
//!   their acknowledgements, the reader that routes events to them, the supervisor that
//!   reattaches after a broken connection; the link's state as a `watch` value.
//! - [`error`]: the error type, [`ClientError`].
//! - [`text`]: text from hosts made safe for a terminal (no escape sequences obeyed).
//!
//! The API is blocking (the plugin's commands run on plain threads); a tokio runtime owned by
//! [`Client`] does the I/O underneath.

pub mod computer;
pub mod error;
pub mod host;
pub mod session;
pub mod ssh;
pub mod text;
pub mod transport;

pub use error::ClientError;
pub use host::Host;
pub use nu_session_protocol::layout::Layout;
pub use nu_session_protocol::{
    Attachment, Binding, BytesKind, ErrorKind, OutputBuffering, RemoteError, RemoteLabel,
    SessionInfo, SessionSettings, value_weight,
};
pub use session::{
    BacklogEvent, Call, CallEvent, HELD_WINDOW, Handover, Link, LinkState, LinkWatch, Next, Notice,
    Receive, SessionHandle, WINDOW,
};
pub use transport::Transport;

/// Owns the I/O runtime and the SSH connections; create one per process and keep it.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    /// One link per host and settings, shared by every session there.
    ssh_links: ssh::Links,
    shared: std::sync::Arc<host::ClientShared>,
}

/// How long a broken connection is retried by default before its sessions are left
/// disconnected on their hosts (PowerShell's robust connections: 4 minutes).
pub const DEFAULT_RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(240);

/// The largest message this client sends (an invocation with its pipeline input and captured
/// variables), in bytes; 1 GiB by default.
pub const MAX_MESSAGE_ENV: &str = "NU_SESSION_MAX_MESSAGE_BYTES";

impl Client {
    pub fn new() -> Result<Client, ClientError> {
        if let Some(len) = std::env::var(MAX_MESSAGE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            nu_session_protocol::set_max_message_len(len);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nu-session-io")
            .enable_all()
            .build()
            .map_err(|e| ClientError::transport("cannot start the I/O runtime", e))?;
        Ok(Client {
            runtime,
            ssh_links: Default::default(),
            shared: std::sync::Arc::new(host::ClientShared::new()),
        })
    }

    /// How long a broken connection is retried before its sessions are left disconnected.
    pub fn set_reconnect_for(&self, duration: std::time::Duration) {
        *self
            .shared
            .reconnect_for
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = duration;
    }

    /// The host behind a computer name, over SSH: the configuration is resolved now (`ssh -G`),
    /// the connection made when first used and shared with every other session there.
    pub fn ssh_host(
        &self,
        name: &computer::ComputerName,
        options: &ssh::SshOptions,
    ) -> Result<Host, ClientError> {
        let target = ssh::SshTarget::resolve(name, options)?;
        let link = self.ssh_links.get(target);
        link.set_context(ssh::LinkContext {
            prompter: options.prompter.clone(),
            deploy: options.deploy.clone(),
        });
        Ok(self.host(Transport::Ssh(link)))
    }

    /// The sessions of the host reached through `transport`.
    pub fn host(&self, transport: Transport) -> Host {
        Host::new(
            transport,
            self.runtime.handle().clone(),
            self.shared.clone(),
        )
    }
}
