//! The errors users see, built in one place: from the host's errors (pointing into the code the
//! user wrote where possible) and from failures to reach a host.

use nu_protocol::{LabeledError, ShellError, Span};
use nu_session_client::{ClientError, RemoteError};

use crate::code::Code;

/// An error the session's code raised, with its labels placed in the user's closure when the
/// code was written literally, or on `span` otherwise.
pub fn remote_error(error: &RemoteError, code: Option<&Code>, span: Span) -> LabeledError {
    let mut labeled = LabeledError::new(error.msg.clone());
    let mut unplaced = Vec::new();
    for label in &error.labels {
        match label.span.and_then(|s| code.and_then(|c| c.local_span(s))) {
            Some(local) => labeled = labeled.with_label(label.text.clone(), local),
            None => unplaced.push(label.text.clone()),
        }
    }
    if labeled.labels.is_empty() {
        let text = if unplaced.is_empty() {
            "raised in the session".to_string()
        } else {
            unplaced.join("; ")
        };
        labeled = labeled.with_label(text, span);
    }
    if let Some(help) = &error.help {
        labeled = labeled.with_help(help.clone());
    }
    if let Some(code) = &error.code {
        labeled = labeled.with_code(code.clone());
    }
    for inner in &error.inner {
        labeled = labeled.with_inner(ShellError::LabeledError(Box::new(remote_error(
            inner, code, span,
        ))));
    }
    labeled
}

/// A failure to reach or use a host.
pub fn client_error(error: &ClientError, span: Span) -> LabeledError {
    match error {
        ClientError::Remote(remote) => remote_error(remote, None, span),
        ClientError::Transport { msg, help } => {
            let labeled = LabeledError::new(msg.clone()).with_label("while doing this", span);
            match help {
                Some(help) => labeled.with_help(help.clone()),
                None => labeled,
            }
        }
    }
}

/// A session whose prompt `enter-session` holds cannot be disconnected.
pub fn in_enter_session(session: &crate::sessions::Session, span: Span) -> LabeledError {
    LabeledError::new(format!(
        "session {} ({}) is in use by enter-session: it cannot be disconnected",
        session.id, session.name
    ))
    .with_label("this session", span)
    .with_help("leave its prompt first (exit-session, exit or Ctrl-D)")
}
