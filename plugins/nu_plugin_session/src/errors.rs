//! The errors users see, built in one place: from the host's errors (pointing into the code the
//! user wrote where possible), from failures to reach a host, for sessions that are missing or in
//! the wrong state, and for the failures of one target among many (named after it).

use nu_protocol::{LabeledError, ShellError, Span};
use nu_session_client::{ClientError, RemoteError};

use crate::code::Code;
use crate::sessions::{Session, SessionState};

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

/// A session id this process does not know (it was given, or it went while the command ran).
pub fn no_session(id: i64, span: Span) -> LabeledError {
    not_found(format!("no session with id {id}"), span)
}

/// A literal id, name or instance id that matches no session.
pub fn not_found(msg: String, span: Span) -> LabeledError {
    LabeledError::new(msg)
        .with_label("not found", span)
        .with_help("`get-session` lists the sessions of this nu process")
}

/// What a command can do with sessions, for the errors of sessions in the wrong state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Connect,
    Disconnect,
    Enter,
    Receive,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Run => "run code",
            Action::Connect => "be connected",
            Action::Disconnect => "be disconnected",
            Action::Enter => "be entered",
            Action::Receive => "be received from",
        }
    }
}

/// `session` cannot undergo `action` in its present state.
pub fn wrong_state(session: &Session, action: Action, span: Span) -> LabeledError {
    let state = session.state();
    let who = format!("session {} ({})", session.id, session.name);
    let (what, help) = match state {
        SessionState::Closed => (
            format!("{who} is Closed: it cannot {}", action.verb()),
            "the session no longer exists; open a new one with new-session".to_string(),
        ),
        SessionState::Broken => (
            format!("{who} is Broken: it cannot {}", action.verb()),
            "its connection is being re-established: try again once get-session shows it Opened, or remove it".to_string(),
        ),
        SessionState::Disconnected if session.attached_elsewhere => (
            format!(
                "{who} is connected to another client (availability Busy): it cannot {} here",
                action.verb()
            ),
            "disconnect it there first (disconnect-session), or wait until that client exits"
                .to_string(),
        ),
        SessionState::Disconnected => (
            format!("{who} is Disconnected, not Opened: it cannot {}", action.verb()),
            format!("connect it first: `connect-session {}`", session.id),
        ),
        SessionState::Opened => (
            format!("{who} is busy: a command is running in it"),
            "try again when the command has finished".to_string(),
        ),
    };
    LabeledError::new(what)
        .with_label("this session", span)
        .with_help(help)
}

/// A session whose prompt `enter-session` holds cannot be disconnected.
pub fn in_enter_session(session: &Session, span: Span) -> LabeledError {
    LabeledError::new(format!(
        "session {} ({}) is in use by enter-session: it cannot be disconnected",
        session.id, session.name
    ))
    .with_label("this session", span)
    .with_help("leave its prompt first (exit-session, exit or Ctrl-D)")
}

/// The failure of one target among several, named after it: `on web2 (session 3): ...`.
pub fn named(error: LabeledError, target: &str) -> LabeledError {
    LabeledError {
        msg: format!("on {target}: {}", error.msg),
        ..error
    }
}

/// The failures of several targets (already [`named`]) as one error: the first one's message and
/// labels, how many failed of how many, and every failure as an inner error.
pub fn many_failed(mut failures: Vec<LabeledError>, total: usize, what: &str) -> LabeledError {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    let first = failures[0].clone();
    let mut error = LabeledError::new(format!(
        "{} of {total} {what} failed; the first {}",
        failures.len(),
        first.msg
    ));
    error.labels = first.labels.clone();
    error.help = first.help.clone();
    for failure in failures {
        error = error.with_inner(ShellError::LabeledError(Box::new(failure)));
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_failures_say_how_many_and_keep_each() {
        let span = Span::test_data();
        let one = named(
            LabeledError::new("division by zero").with_label("here", span),
            "web2 (session 3)",
        );
        assert_eq!(one.msg, "on web2 (session 3): division by zero");
        let two = named(LabeledError::new("boom"), "web4 (session 5)");
        let both = many_failed(vec![one.clone(), two], 5, "sessions");
        assert_eq!(
            both.msg,
            "2 of 5 sessions failed; the first on web2 (session 3): division by zero"
        );
        assert_eq!(both.labels, one.labels);
        assert_eq!(both.inner.len(), 2);
        assert_eq!(many_failed(vec![one.clone()], 5, "sessions").msg, one.msg);
    }
}
