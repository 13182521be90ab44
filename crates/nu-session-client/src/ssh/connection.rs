//! One authenticated SSH connection to a host (through its `ProxyJump` hops), and the channels
//! opened on it: a host's Unix socket (`direct-streamlocal`) or a command (`exec`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};

use crate::ClientError;
use crate::computer::ComputerName;

use super::Prompter;
use super::auth::authenticate;
use super::config::{SshOptions, SshTarget};
use super::known_hosts::Verifier;

/// One authenticated SSH connection, shared by every channel to its host.
pub struct SshConnection {
    target: SshTarget,
    handle: Handle<Verifier>,
    /// The jump host this connection is tunnelled through (`ProxyJump`), kept open with it.
    _via: Option<Arc<SshConnection>>,
    /// The server refused a command channel while the connection was up: it holds as many as
    /// the server allows (`MaxSessions`).
    full: AtomicBool,
}

/// The last hop of `target.proxy_jump`, resolved (`ssh -G`, off the I/O threads), with the
/// hops before it as its own jumps.
async fn last_hop(target: &SshTarget) -> Result<Option<SshTarget>, ClientError> {
    let Some((last, before)) = target.proxy_jump.split_last() else {
        return Ok(None);
    };
    let spec = last.strip_prefix("ssh://").unwrap_or(last);
    let name = ComputerName::parse(spec).map_err(|e| {
        ClientError::transport(
            &format!("bad ProxyJump for {}", target.computer_name),
            format!("{}: {}", e.what, e.reason),
        )
    })?;
    // As OpenSSH does, the jump host is checked with its own settings (its host key policy
    // from the config, never the target's: `StrictHostKeyChecking no` for an inner host must
    // not open the bastion hop to a man in the middle).
    let options = SshOptions {
        config_file: target.config_file.clone(),
        connect_timeout: target.connect_timeout,
        ..Default::default()
    };
    let mut hop = tokio::task::spawn_blocking(move || SshTarget::resolve(&name, &options))
        .await
        .map_err(|e| ClientError::transport("cannot read the ssh configuration", e))??;
    // The hops of the chain are the ones the target names, not the jump host's own.
    hop.proxy_jump = before.to_vec();
    Ok(Some(hop))
}

impl SshConnection {
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Whether the server refused this connection another command channel (its
    /// `MaxSessions`): new commands need another connection.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Connects, verifies the host key, and authenticates (asking `prompter` for passphrases
    /// and passwords when the keys are not enough).
    pub async fn connect(
        target: SshTarget,
        prompter: Option<Prompter>,
    ) -> Result<SshConnection, ClientError> {
        let refusal = Arc::new(Mutex::new(None));
        // The known_hosts files are read once, off the I/O threads, for the algorithms to ask
        // for and the key the host shows.
        let verifier = {
            let (target, refusal) = (target.clone(), refusal.clone());
            tokio::task::spawn_blocking(move || Verifier::load(target, refusal))
                .await
                .map_err(|e| ClientError::transport("cannot read the known_hosts files", e))?
        };
        let mut config = client::Config {
            keepalive_interval: Some(target.alive_interval),
            keepalive_max: target.alive_count_max,
            nodelay: true,
            ..Default::default()
        };
        config.preferred.host_key_certificates = verifier.certificate_algorithms().into();
        let config = Arc::new(config);
        let timeout = target.connect_timeout.unwrap_or(Duration::from_secs(30));
        let name = &target.computer_name;
        let via = match last_hop(&target).await? {
            None => None,
            Some(hop) => Some(Arc::new(
                Box::pin(SshConnection::connect(hop, prompter.clone())).await?,
            )),
        };
        let connecting = async {
            match &via {
                None => {
                    let address = (target.hostname.clone(), target.port);
                    client::connect(config, address, verifier).await
                }
                Some(via) => {
                    let channel = via
                        .handle
                        .channel_open_direct_tcpip(
                            target.hostname.clone(),
                            u32::from(target.port),
                            "127.0.0.1",
                            0,
                        )
                        .await?;
                    client::connect_stream(config, channel.into_stream(), verifier).await
                }
            }
        };
        let mut handle = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::transport(
                    &format!("cannot connect to {name}"),
                    format!("no answer within {}s", timeout.as_secs()),
                )
                .with_help("check the host name and port, or raise --connect-timeout"));
            }
            Ok(Err(e)) => {
                if let Some(refusal) = refusal.lock().ok().and_then(|mut r| r.take()) {
                    return Err(refusal);
                }
                let through = via
                    .as_ref()
                    .map(|v| format!(" through {}", v.target.computer_name))
                    .unwrap_or_default();
                return Err(ClientError::transport(
                    &format!("cannot connect to {name}{through}"),
                    e,
                ));
            }
            Ok(Ok(handle)) => handle,
        };
        authenticate(&mut handle, &target, prompter.as_ref()).await?;
        Ok(SshConnection {
            target,
            handle,
            _via: via,
            full: AtomicBool::new(false),
        })
    }

    /// Opens the Unix socket at `path` on the host (`direct-streamlocal@openssh.com`).
    pub async fn open_socket(
        &self,
        path: &str,
    ) -> Result<russh::ChannelStream<client::Msg>, russh::Error> {
        let channel = self.handle.channel_open_direct_streamlocal(path).await?;
        Ok(channel.into_stream())
    }

    /// Returns once the connection has closed (a channel waiting for window space on a dead
    /// connection would wait forever: race it with this).
    pub async fn closed(&self) {
        while !self.handle.is_closed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `command` on the host in a new channel (its stdin, stdout, stderr and exit status).
    pub async fn exec(&self, command: &str) -> Result<russh::Channel<client::Msg>, ClientError> {
        let name = &self.target.computer_name;
        let channel = self.handle.channel_open_session().await.map_err(|e| {
            if matches!(e, russh::Error::ChannelOpenFailure(_)) && !self.handle.is_closed() {
                self.full.store(true, Ordering::Relaxed);
            }
            ClientError::transport(&format!("cannot open a channel to {name}"), e)
        })?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| ClientError::transport(&format!("cannot run a command on {name}"), e))?;
        Ok(channel)
    }
}
