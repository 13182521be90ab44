//! [`SshLink`]: the SSH connection to one host, shared by everything this client does there, and
//! [`Links`], the pool that shares it.
//!
//! A host connection is a channel on the link: `direct-streamlocal` straight to the host's socket
//! once the host's runtime directory is known (from the hello of an earlier connection), else —
//! and whenever that is refused — a command that runs `nu-session-host connect` (which pays the
//! remote shell's start-up and starts the manager when it is not running). When the host has no
//! `nu-session-host` of this client's version, ours is copied there first
//! ([`super::host_program`]).

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::ClientError;
use crate::transport::{Wire, hello};

use super::Prompter;
use super::config::SshTarget;
use super::connection::SshConnection;
use super::host_program::{self, Deploy, Found};

/// How the latest command that used a link wants it to behave.
#[derive(Clone, Default)]
pub struct LinkContext {
    /// Asks for passphrases and passwords.
    pub prompter: Option<Prompter>,
    /// Copies this client's host program to a host that lacks one, told how it goes.
    pub deploy: Deploy,
}

/// The shared SSH connection to one host, made when first needed and again after it drops.
pub struct SshLink {
    target: SshTarget,
    /// The connection new channels go over. One that filled up (the server's `MaxSessions`)
    /// is replaced; the channels it carries keep it open (see [`Held`]) until the last closes.
    connection: tokio::sync::Mutex<Option<Arc<SshConnection>>>,
    direct: Mutex<Direct>,
    context: Mutex<LinkContext>,
    /// Held while the host program is copied: one copy per host at a time. True once this
    /// link has copied it.
    deploying: tokio::sync::Mutex<bool>,
}

/// What this link knows about opening the host's sockets directly.
#[derive(Default)]
struct Direct {
    runtime_dir: Option<String>,
    /// The server forbids stream-local forwarding (`AllowStreamLocalForwarding no`).
    prohibited: bool,
}

impl SshLink {
    pub fn new(target: SshTarget) -> SshLink {
        SshLink {
            target,
            connection: tokio::sync::Mutex::new(None),
            direct: Mutex::new(Direct::default()),
            context: Mutex::new(LinkContext::default()),
            deploying: tokio::sync::Mutex::new(false),
        }
    }

    /// Makes `context` the one used when this link (re)connects or needs a host program.
    pub fn set_context(&self, context: LinkContext) {
        *self.context.lock().unwrap_or_else(|e| e.into_inner()) = context;
    }

    fn context(&self) -> LinkContext {
        self.context
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn direct(&self) -> MutexGuard<'_, Direct> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the socket for `session` (or the manager) is on the host, when a direct channel is
    /// worth trying.
    fn socket_path(&self, session: Option<Uuid>) -> Option<String> {
        let direct = self.direct();
        let dir = direct.runtime_dir.as_ref().filter(|_| !direct.prohibited)?;
        Some(match session {
            Some(id) => format!("{dir}/sessions/{id}.sock"),
            None => format!("{dir}/manager.sock"),
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Whether the SSH connection is up right now (without waiting for one being made).
    pub(crate) fn is_up(&self) -> bool {
        self.connection
            .try_lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|c| !c.is_closed()))
            .unwrap_or(false)
    }

    async fn connection(&self) -> Result<Arc<SshConnection>, ClientError> {
        let mut slot = self.connection.lock().await;
        // A full one is left to the channels it carries, as OpenSSH's multiplexing client does
        // when the master's sessions are used up: new channels get another connection.
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed() && !c.is_full()) {
            return Ok(connection.clone());
        }
        // Nobody is asked for a password by a reconnect in the background: it would race
        // whatever the user is typing. It fails instead, and `connect-session` asks.
        let prompter = self
            .context()
            .prompter
            .filter(|_| !crate::session::in_background());
        let connection = Arc::new(SshConnection::connect(self.target.clone(), prompter).await?);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// A connection to the manager (`None`) or a session's worker, after the hello.
    pub(crate) async fn open(
        &self,
        session: Option<Uuid>,
    ) -> Result<(Wire, nu_session_protocol::Hello), ClientError> {
        let connection = self.connection().await?;
        let mut refused = false;
        if let Some(path) = self.socket_path(session) {
            match connection.open_socket(&path).await {
                Ok(stream) => {
                    let stream = Held::new(stream, &connection);
                    if let Ok(opened) = self.hello(Box::pin(stream)).await {
                        return Ok(opened);
                    }
                }
                // OpenSSH answers "administratively prohibited" both when forwarding is off and
                // when nothing listens (a manager that exited when idle, an ended session): the
                // relay below starts the manager or says what happened.
                Err(_) => refused = true,
            }
        }
        let args = match session {
            Some(id) => format!("connect --session {id}"),
            None => "connect".to_string(),
        };
        let stream = match self.relay(&connection, &args).await {
            // The server's MaxSessions: this connection carries all the commands it may.
            Err(_) if connection.is_full() => {
                let connection = self.connection().await?;
                self.relay(&connection, &args).await?
            }
            other => other?,
        };
        let opened = self.hello(Box::pin(stream)).await?;
        if refused && session.is_some() {
            // The session's socket was there after all: the server forbids forwarding to it.
            self.direct().prohibited = true;
        }
        Ok(opened)
    }

    /// Runs `nu-session-host <args>` on the host over `connection` (copying it there first when
    /// it is missing): the relay's stream.
    async fn relay(
        &self,
        connection: &Arc<SshConnection>,
        args: &str,
    ) -> Result<Held<russh::ChannelStream<russh::client::Msg>>, ClientError> {
        let stream = match host_program::start(connection, args).await? {
            Found::Relay(stream) => stream,
            Found::Missing(probe) => {
                // One copy per host, however many opens need it at the same time; the others
                // find it there once it is.
                let mut copied = self.deploying.lock().await;
                if !*copied {
                    host_program::deploy(connection, &probe, &self.context().deploy).await?;
                    *copied = true;
                }
                match host_program::start(connection, args).await? {
                    Found::Relay(stream) => stream,
                    Found::Missing(_) => {
                        return Err(ClientError::transport(
                            &format!(
                                "nu-session-host did not start on {}",
                                self.target.computer_name
                            ),
                            "it is still missing after it was copied there",
                        ));
                    }
                }
            }
        };
        Ok(Held::new(stream, connection))
    }

    async fn hello(
        &self,
        stream: std::pin::Pin<Box<dyn crate::transport::Stream>>,
    ) -> Result<(Wire, nu_session_protocol::Hello), ClientError> {
        let (conn, hello) = hello(stream).await?;
        if let Some(dir) = hello.runtime_dir.as_ref().filter(|d| d.starts_with('/')) {
            self.direct().runtime_dir = Some(dir.clone());
        }
        Ok((conn, hello))
    }
}

/// The SSH links of one client: one per distinct resolved target, shared by every session there.
/// A target resolved with other settings (another identity file, another host key policy) gets
/// a link of its own: a failed login with one never stands for the other.
#[derive(Default)]
pub struct Links {
    links: Mutex<Vec<Arc<SshLink>>>,
}

impl Links {
    /// The link for `target`, made if there is none yet.
    pub fn get(&self, target: SshTarget) -> Arc<SshLink> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.iter().find(|l| l.target.same_connection(&target)) {
            return link.clone();
        }
        let link = Arc::new(SshLink::new(target));
        links.push(link.clone());
        link
    }
}

/// A channel's stream, holding the SSH connection it runs on open for as long as it lives
/// (a connection that filled up is no longer the link's, but its channels still need it).
pub(crate) struct Held<S> {
    stream: S,
    _connection: Arc<SshConnection>,
}

impl<S> Held<S> {
    fn new(stream: S, connection: &Arc<SshConnection>) -> Held<S> {
        Held {
            stream,
            _connection: connection.clone(),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
