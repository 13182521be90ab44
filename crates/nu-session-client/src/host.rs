//! [`Host`]: the sessions of one machine, as reached over one [`Transport`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nu_session_protocol::{
    Attachment, ClientMessage, HostMessage, Received, SessionInfo, SessionSettings,
};
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::ClientError;
use crate::session::SessionHandle;
use crate::transport::{Transport, Wire};

#[derive(Clone)]
pub struct Host {
    transport: Transport,
    runtime: Handle,
    client: Arc<ClientShared>,
    /// What the host's manager said the user should know, not taken yet.
    notices: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Notices kept for [`Host::take_notices`] at most (they repeat with every manager hello).
const MAX_NOTICES: usize = 16;

/// What every host and session of one [`crate::Client`] shares.
pub(crate) struct ClientShared {
    /// Identifies this client process to the hosts' sessions.
    pub id: Uuid,
    /// Invocation ids: one counter per client, from a random start, so that a session sees the
    /// ids of one client only grow (it ignores one sent again) and ids of different clients
    /// never collide.
    pub next_call: AtomicU64,
    /// How long a broken connection is retried before the session is left disconnected.
    pub reconnect_for: std::sync::Mutex<Duration>,
}

impl ClientShared {
    pub fn new() -> ClientShared {
        ClientShared {
            id: Uuid::new_v4(),
            next_call: AtomicU64::new((Uuid::new_v4().as_u128() as u64 >> 24) << 20 | 1),
            reconnect_for: std::sync::Mutex::new(crate::DEFAULT_RECONNECT_FOR),
        }
    }

    pub fn reconnect_for(&self) -> Duration {
        *self.reconnect_for.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Host {
    pub(crate) fn new(transport: Transport, runtime: Handle, client: Arc<ClientShared>) -> Self {
        Host {
            transport,
            runtime,
            client,
            notices: Default::default(),
        }
    }

    /// What the host said the user should know (each once per `Host`, oldest first): its
    /// sessions would not survive a logout, sessions of another version are there.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn shared(&self) -> &ClientShared {
        &self.client
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Whether `other` reaches the same host the same way (the same SSH connection, or this
    /// machine's same runtime directory): sessions one lists are the other's.
    pub fn same_as(&self, other: &Host) -> bool {
        match (&self.transport, &other.transport) {
            (Transport::Ssh(a), Transport::Ssh(b)) => {
                Arc::ptr_eq(a, b) || a.target().same_connection(b.target())
            }
            (Transport::Local { layout: a, .. }, Transport::Local { layout: b, .. }) => a == b,
            _ => false,
        }
    }

    /// The SSH port, for hosts reached over SSH.
    pub fn port(&self) -> Option<u16> {
        match &self.transport {
            Transport::Ssh(link) => Some(link.target().port),
            Transport::Local { .. } => None,
        }
    }

    /// One request to the manager on a connection of its own.
    fn ask_manager(&self, request: ClientMessage) -> Result<HostMessage, ClientError> {
        self.runtime.block_on(self.ask_manager_async(request))
    }

    async fn ask_manager_async(&self, request: ClientMessage) -> Result<HostMessage, ClientError> {
        let (mut conn, hello) = self.transport.connect_manager().await?;
        {
            let mut notices = self.notices.lock().unwrap_or_else(|e| e.into_inner());
            for notice in hello
                .notices
                .iter()
                .map(|n| crate::text::printable(n).into_owned())
            {
                if notices.len() < MAX_NOTICES && !notices.contains(&notice) {
                    notices.push(notice);
                }
            }
        }
        conn.send(request)
            .await
            .map_err(|e| ClientError::transport("cannot send to the session manager", e))?;
        match conn.next().await {
            Some(Ok(HostMessage::Error(e))) => Err(e.into()),
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => Err(ClientError::transport(
                "bad answer from the session manager",
                e,
            )),
            None => Err(ClientError::transport(
                "the session manager closed the connection",
                "no answer",
            )),
        }
    }

    /// Whether the session is gone from its host, and why: `Ok(None)` while it still exists.
    pub(crate) async fn gone(&self, instance_id: Uuid) -> Result<Option<String>, ClientError> {
        match self.ask_manager_async(ClientMessage::ListSessions).await? {
            HostMessage::Sessions(all) if all.iter().any(|s| s.instance_id == instance_id) => {
                return Ok(None);
            }
            HostMessage::Sessions(_) => {}
            other => return Err(unexpected(other)),
        }
        let reason = match self
            .ask_manager_async(ClientMessage::EndReason { instance_id })
            .await
        {
            Ok(HostMessage::EndReason { reason, .. }) => reason,
            _ => None,
        };
        Ok(Some(reason.unwrap_or_else(|| {
            "it no longer exists on its host".to_string()
        })))
    }

    pub fn create_session(&self, settings: SessionSettings) -> Result<SessionInfo, ClientError> {
        match self.ask_manager(ClientMessage::CreateSession(settings))? {
            HostMessage::Created(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Every session of this user on the host.
    pub fn list_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        match self.ask_manager(ClientMessage::ListSessions)? {
            HostMessage::Sessions(sessions) => Ok(sessions),
            other => Err(unexpected(other)),
        }
    }

    /// Stops everything running in the session and deletes it on the host.
    pub fn remove_session(&self, instance_id: Uuid) -> Result<(), ClientError> {
        match self.ask_manager(ClientMessage::RemoveSession { instance_id })? {
            HostMessage::Removed { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Becomes the session's attached client; everything it keeps is sent to this client (as
    /// far as the windows go). A session attached to another client is a `Busy` error.
    pub fn attach(&self, instance_id: Uuid) -> Result<SessionHandle, ClientError> {
        let (conn, attachment) = self
            .runtime
            .block_on(self.attach_conn(instance_id, Vec::new()))?;
        Ok(SessionHandle::start(self.clone(), conn, attachment))
    }

    /// A connection to the session, attached, the host told what this client has already
    /// (`resume`: after a broken connection).
    pub(crate) async fn attach_conn(
        &self,
        instance_id: Uuid,
        resume: Vec<Received>,
    ) -> Result<(Wire, Attachment), ClientError> {
        let mut conn = self.transport.connect_session(instance_id).await?;
        conn.send(ClientMessage::Attach {
            instance_id,
            client: Some(self.client.id),
            resume,
            window: crate::session::WINDOW as u64,
        })
        .await
        .map_err(|e| ClientError::transport("cannot send to the session", e))?;
        match conn.next().await {
            Some(Ok(HostMessage::Attached(attachment))) => Ok((conn, attachment)),
            Some(Ok(HostMessage::Error(e))) => Err(e.into()),
            Some(Ok(other)) => Err(unexpected(other)),
            Some(Err(e)) => Err(ClientError::transport("bad answer from the session", e)),
            None => Err(ClientError::lost()),
        }
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }
}

fn unexpected(message: HostMessage) -> ClientError {
    ClientError::transport("unexpected answer from the host", format!("{message:?}"))
}
