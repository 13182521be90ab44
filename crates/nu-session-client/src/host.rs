//! [`Host`]: the sessions of one machine, as reached over one [`Transport`].

use futures::{SinkExt, StreamExt};
use nu_session_protocol::{ClientMessage, HostMessage, SessionInfo, SessionSettings};
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::ClientError;
use crate::session::SessionHandle;
use crate::transport::Transport;

#[derive(Clone)]
pub struct Host {
    transport: Transport,
    runtime: Handle,
    /// Identifies this client process to the host's sessions.
    client: Uuid,
}

impl Host {
    pub(crate) fn new(transport: Transport, runtime: Handle, client: Uuid) -> Self {
        Host {
            transport,
            runtime,
            client,
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
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
        self.runtime.block_on(async {
            let mut conn = self.transport.connect_manager().await?;
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
        })
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

    /// Becomes the session's attached client. Output after event `resume_after` that the host
    /// still keeps is sent again. A session attached to another client is a `Busy` error.
    pub fn attach(
        &self,
        instance_id: Uuid,
        resume_after: Option<u64>,
    ) -> Result<SessionHandle, ClientError> {
        let runtime = self.runtime.clone();
        self.runtime.block_on(async {
            let mut conn = self.transport.connect_session(instance_id).await?;
            conn.send(ClientMessage::Attach {
                instance_id,
                resume_after,
                client: Some(self.client),
            })
            .await
            .map_err(|e| ClientError::transport("cannot send to the session", e))?;
            match conn.next().await {
                Some(Ok(HostMessage::Attached(attachment))) => Ok(SessionHandle::start(
                    conn,
                    attachment,
                    resume_after.unwrap_or(0),
                    runtime,
                )),
                Some(Ok(HostMessage::Error(e))) => Err(e.into()),
                Some(Ok(other)) => Err(unexpected(other)),
                Some(Err(e)) => Err(ClientError::transport("bad answer from the session", e)),
                None => Err(ClientError::lost()),
            }
        })
    }
}

fn unexpected(message: HostMessage) -> ClientError {
    ClientError::transport("unexpected answer from the host", format!("{message:?}"))
}
