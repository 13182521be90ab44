//! Errors of the client library: what the host said, or why it could not be reached.

use nu_session_protocol::{ErrorKind, RemoteError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The host answered with an error.
    #[error("{0}")]
    Remote(Box<RemoteError>),
    /// The host could not be reached, or the connection failed.
    #[error("{msg}")]
    Transport { msg: String, help: Option<String> },
}

impl From<RemoteError> for ClientError {
    fn from(e: RemoteError) -> Self {
        ClientError::Remote(Box::new(crate::text::printable_error(e)))
    }
}

impl ClientError {
    pub fn transport(context: &str, error: impl std::fmt::Display) -> Self {
        ClientError::Transport {
            msg: format!("{context}: {error}"),
            help: None,
        }
    }

    pub fn with_help(self, help: impl Into<String>) -> Self {
        match self {
            ClientError::Remote(e) => ClientError::Remote(Box::new(e.with_help(help))),
            ClientError::Transport { msg, .. } => ClientError::Transport {
                msg,
                help: Some(help.into()),
            },
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Remote(e) => e.kind,
            ClientError::Transport { .. } => ErrorKind::Failed,
        }
    }

    pub fn help(&self) -> Option<&str> {
        match self {
            ClientError::Remote(e) => e.help.as_deref(),
            ClientError::Transport { help, .. } => help.as_deref(),
        }
    }

    pub fn lost() -> Self {
        ClientError::Transport {
            msg: "the connection to the session was lost".into(),
            help: None,
        }
    }
}
