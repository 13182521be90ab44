//! The messages. Every connection starts with [`ClientMessage::Hello`] answered by
//! [`HostMessage::Hello`] (or an error naming both versions); keep `Hello` the first variant of
//! both enums so that exchange decodes across versions.

use std::time::Duration;

use chrono::{DateTime, Utc};
use nu_protocol::{ShellError, Span, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Client → host (the manager or a session's worker).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    /// Manager: create a session and answer [`HostMessage::Created`].
    CreateSession(SessionSettings),
    /// Manager: answer [`HostMessage::Sessions`] with every session of this user on the host.
    ListSessions,
    /// Manager or worker: stop everything in the session, delete it, answer
    /// [`HostMessage::Removed`].
    RemoveSession {
        instance_id: Uuid,
    },
    /// Worker: become the session's one attached client, answered by [`HostMessage::Attached`].
    /// `client` identifies the client process: an attachment of the same client on another
    /// connection (one that broke) is taken over; one of another client makes the session busy.
    /// `resume` says, per invocation, the newest event this client already has (after a broken
    /// connection): those are not sent again. `window` is how much of one invocation's output
    /// (by [`EventBody::cost`]) may be unacknowledged at once: the host sends an invocation's
    /// output only as far as that, and goes on as acknowledgements make room.
    Attach {
        instance_id: Uuid,
        client: Option<Uuid>,
        resume: Vec<Received>,
        window: u64,
    },
    /// Worker: detach this client, leaving the session running, with new settings when given;
    /// answered by [`HostMessage::Disconnected`].
    Disconnect {
        idle_timeout: Option<Duration>,
        output_buffering: Option<OutputBuffering>,
    },
    /// Worker: run code. Invocations run one at a time, in the order received.
    Invoke(Invocation),
    /// Worker: stop the invocation `call_id` (running or queued).
    Interrupt {
        call_id: u64,
    },
    /// Worker: output of one invocation was consumed and may be forgotten (see [`Ack`]).
    Ack(Ack),
    /// Worker: from now on, up to `window` of the invocation `call_id`'s output (by
    /// [`EventBody::cost`]) may be unacknowledged, instead of the attachment's window: for a
    /// consumer that holds a whole result before handing it on.
    Window {
        call_id: u64,
        window: u64,
    },
    /// Manager: why the session `instance_id` ended, answered by [`HostMessage::EndReason`].
    EndReason {
        instance_id: Uuid,
    },
    /// Worker: the attached client is alive. Sent when it has sent nothing else for
    /// [`Attachment::heartbeat`]; not answered. After three beats of silence the worker lets go
    /// of the client (a frozen or vanished client must not keep its session busy).
    Ping,
}

/// Host → client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HostMessage {
    Hello(Hello),
    Created(SessionInfo),
    Sessions(Vec<SessionInfo>),
    Removed {
        instance_id: Uuid,
    },
    Attached(Attachment),
    Disconnected(SessionInfo),
    /// Output of invocations, in sequence order, batched.
    Events(Vec<Event>),
    /// `count` values or pieces of output of the invocation `call_id` (`None`: printed while
    /// none ran) were discarded to make room (output buffering `Drop`) since the last report.
    Dropped {
        call_id: Option<u64>,
        count: u64,
    },
    /// The request failed; the connection stays usable unless the error says otherwise.
    Error(RemoteError),
    /// Why a session ended (removed, expired, its worker crashed), when the host knows; `None`
    /// when it has no record of it.
    EndReason {
        instance_id: Uuid,
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub software_version: String,
    /// Host → client: the host's runtime directory, so that a client over SSH can open its
    /// sockets directly (`direct-streamlocal`) instead of running `nu-session-host connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<String>,
    /// Host → client: what the user should know about this host, once (sessions there would not
    /// survive their logout, sessions of another version are there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

impl Hello {
    pub fn current() -> Self {
        Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            software_version: crate::SOFTWARE_VERSION.to_string(),
            runtime_dir: None,
            notices: Vec::new(),
        }
    }

    /// The host's hello, naming its runtime directory.
    pub fn host(runtime_dir: &std::path::Path) -> Self {
        Hello {
            runtime_dir: runtime_dir.to_str().map(str::to_string),
            ..Hello::current()
        }
    }
}

/// What to do with output when no client reads it and the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OutputBuffering {
    /// Pause the pipeline until output is read: nothing is lost.
    #[default]
    Block,
    /// Keep the newest output, discarding the oldest.
    Drop,
}

impl OutputBuffering {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputBuffering::Block => "Block",
            OutputBuffering::Drop => "Drop",
        }
    }

    /// Parses the user-facing spelling, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("block") {
            Some(OutputBuffering::Block)
        } else if s.eq_ignore_ascii_case("drop") {
            Some(OutputBuffering::Drop)
        } else {
            None
        }
    }
}

/// What a client asks for when it creates a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSettings {
    pub name: String,
    pub configuration_name: String,
    pub idle_timeout: Duration,
    pub output_buffering: OutputBuffering,
}

/// A session as its host describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub instance_id: Uuid,
    pub name: String,
    pub configuration_name: String,
    /// The user the session runs as on the host.
    pub user: String,
    pub created: DateTime<Utc>,
    pub idle_timeout: Duration,
    pub output_buffering: OutputBuffering,
    /// Whether a client is attached right now.
    pub attached: bool,
    /// Which client is attached (its [`ClientMessage::Attach`] `client`).
    #[serde(default)]
    pub attached_client: Option<Uuid>,
    /// Whether an invocation is running.
    pub running: bool,
    pub disconnected_on: Option<DateTime<Utc>>,
}

/// The answer to [`ClientMessage::Attach`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub info: SessionInfo,
    /// Invocations running or queued now, in order (by any client).
    pub pending_calls: Vec<u64>,
    /// Invocations whose output is kept, not all consumed yet, in order.
    pub kept: Vec<u64>,
    /// The highest invocation id this client has sent to this session, so that a client that
    /// reattaches after a broken connection can send again what never arrived.
    pub last_call_from_client: Option<u64>,
    /// How often the attached client must be heard from (see [`ClientMessage::Ping`]).
    pub heartbeat: Duration,
}

/// The newest event of an invocation a client has received ([`ClientMessage::Attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub call_id: u64,
    pub seq: u64,
}

/// What a consumer has consumed of one invocation's output: every event of it up to `seq`,
/// all of event `seq` when `part` is `None`, else (a group of values) only its values before
/// the index `part` (counted from the group's first value as made, see
/// [`EventBody::Values`]). Acknowledgements are cumulative per invocation: sending one again,
/// or an older one, changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// `None`: what the session printed while no invocation ran.
    pub call_id: Option<u64>,
    pub seq: u64,
    pub part: Option<u32>,
}

/// One piece of code to run in a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    /// Chosen by the client, unique in the session (clients start from a random base); names
    /// the invocation's events. Increases with each invocation of a client.
    pub call_id: u64,
    /// Nushell source, evaluated at the session's top level (so `let`, `def`, `cd` persist).
    pub source: String,
    /// Variables set before `source` runs: closure parameters and captured variables.
    pub bindings: Vec<Binding>,
    /// The pipeline input, seen by `source` as `$in`.
    #[serde(with = "crate::value::option")]
    pub input: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binding {
    /// Without the `$`.
    pub name: String,
    #[serde(with = "crate::value")]
    pub value: Value,
}

/// One unit of a session's output, numbered so it can be acknowledged and replayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EventBody {
    /// The invocation started. `stream` is false when it produces exactly one value (a single
    /// value stays a value, as it would locally). `bytes` is set when its result is a byte
    /// stream (an external command's stdout, a file), which follows as [`EventBody::Bytes`].
    Started {
        call_id: u64,
        stream: bool,
        bytes: Option<BytesKind>,
    },
    Value {
        call_id: u64,
        #[serde(with = "crate::value")]
        value: Value,
    },
    /// Several values of a stream, in order: what a fast producer made while the connection
    /// was busy sending (the worker adds a stream's values to its newest event until that is
    /// sent, so a slow producer's values still go one by one, at once).
    Values {
        call_id: u64,
        /// The index of the first value here among the group's values as made: more than 0
        /// when the ones before were consumed (acknowledged with a `part`).
        first: u32,
        #[serde(with = "crate::value::many")]
        values: Vec<Value>,
    },
    /// Bytes the session wrote to its stdout or stderr (`print`, external commands that are not
    /// the last in their pipeline), with the invocation that was running when they were written.
    Output {
        call_id: Option<u64>,
        stderr: bool,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A piece of the invocation's byte stream result, as the source produced it.
    Bytes {
        call_id: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The invocation finished, with its error if it failed.
    Finished {
        call_id: u64,
        error: Option<RemoteError>,
    },
}

/// What an event counts for beyond its contents (see [`EventBody::cost`]).
pub const EVENT_COST: usize = 32;

impl EventBody {
    /// Bytes this event holds, roughly; buffers are bounded by this.
    pub fn weight(&self) -> usize {
        self.cost()
    }

    /// What the event counts for in its invocation's flow-control window: about what it takes
    /// in memory once decoded. Both ends compute it from the event alone, so they agree on
    /// every window; a group of values costs what its values cost one by one, so a group that
    /// lost its first values (see [`Ack`]) costs what is left.
    pub fn cost(&self) -> usize {
        match self {
            EventBody::Value { value, .. } => value_cost(value),
            EventBody::Values { values, .. } => values.iter().map(value_cost).sum(),
            EventBody::Output { bytes, .. } | EventBody::Bytes { bytes, .. } => {
                EVENT_COST + bytes.len()
            }
            EventBody::Started { .. } | EventBody::Finished { error: None, .. } => EVENT_COST,
            EventBody::Finished {
                error: Some(error), ..
            } => EVENT_COST + error.weight(),
        }
    }

    /// The invocation the event belongs to (`None`: printed while none ran).
    pub fn call_id(&self) -> Option<u64> {
        match self {
            EventBody::Started { call_id, .. }
            | EventBody::Value { call_id, .. }
            | EventBody::Values { call_id, .. }
            | EventBody::Bytes { call_id, .. }
            | EventBody::Finished { call_id, .. } => Some(*call_id),
            EventBody::Output { call_id, .. } => *call_id,
        }
    }
}

/// What one value of a stream costs in its invocation's window (see [`EventBody::cost`]).
pub fn value_cost(value: &Value) -> usize {
    EVENT_COST + value_weight(value)
}

/// Bytes a value holds, roughly (its encoding is about as long).
pub fn value_weight(value: &Value) -> usize {
    match value {
        Value::String { val, .. } => 24 + val.len(),
        Value::Glob { val, .. } => 24 + val.len(),
        Value::Binary { val, .. } => 24 + val.len(),
        Value::List { vals, .. } => 24 + vals.iter().map(value_weight).sum::<usize>(),
        Value::Record { val, .. } => {
            24 + val
                .iter()
                .map(|(k, v)| k.len() + value_weight(v))
                .sum::<usize>()
        }
        _ => 24,
    }
}

/// What a byte stream holds, as Nushell's `ByteStreamType`: text, binary, or either (an
/// external command's output: text when it is valid UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BytesKind {
    Unknown,
    String,
    Binary,
}

impl From<nu_protocol::ByteStreamType> for BytesKind {
    fn from(kind: nu_protocol::ByteStreamType) -> Self {
        match kind {
            nu_protocol::ByteStreamType::Unknown => BytesKind::Unknown,
            nu_protocol::ByteStreamType::String => BytesKind::String,
            nu_protocol::ByteStreamType::Binary => BytesKind::Binary,
        }
    }
}

impl From<BytesKind> for nu_protocol::ByteStreamType {
    fn from(kind: BytesKind) -> Self {
        match kind {
            BytesKind::Unknown => nu_protocol::ByteStreamType::Unknown,
            BytesKind::String => nu_protocol::ByteStreamType::String,
            BytesKind::Binary => nu_protocol::ByteStreamType::Binary,
        }
    }
}

/// An error from the host, with labels whose spans are relative to the invocation's source
/// (byte offsets), so the client can point into the code the user wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RemoteError {
    pub msg: String,
    pub labels: Vec<RemoteLabel>,
    pub help: Option<String>,
    pub code: Option<String>,
    pub inner: Vec<RemoteError>,
    /// What kind of failure this is, for clients that react to it.
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ErrorKind {
    #[default]
    Failed,
    /// The code was interrupted.
    Interrupted,
    /// The session is attached to another client.
    Busy,
    /// No such session on the host.
    NotFound,
    /// The peer speaks another protocol version.
    Version,
    /// The request was malformed or not valid on this connection.
    BadRequest,
    /// The session ended (its code called `exit`); it is gone from its host.
    Ended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteLabel {
    pub text: String,
    /// `(start, end)` byte offsets into the invocation's source, when the label points there.
    pub span: Option<(usize, usize)>,
}

impl RemoteError {
    /// Bytes the error holds, roughly.
    pub fn weight(&self) -> usize {
        self.msg.len()
            + self.help.as_ref().map_or(0, String::len)
            + self.code.as_ref().map_or(0, String::len)
            + self.labels.iter().map(|l| 32 + l.text.len()).sum::<usize>()
            + self.inner.iter().map(RemoteError::weight).sum::<usize>()
    }

    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        RemoteError {
            msg: msg.into(),
            kind,
            ..Default::default()
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Converts a Nushell error raised while running source that was parsed into the range
    /// `source_span` of the host's engine; spans outside that range are dropped.
    pub fn from_shell_error(error: &ShellError, source_span: Span) -> Self {
        let kind = if matches!(error, ShellError::Interrupted { .. }) {
            ErrorKind::Interrupted
        } else {
            ErrorKind::Failed
        };
        let labeled = nu_protocol::LabeledError::from_diagnostic(error);
        let mut remote = Self::from_labeled(&labeled, source_span);
        remote.kind = kind;
        remote
    }

    fn from_labeled(error: &nu_protocol::LabeledError, source_span: Span) -> Self {
        RemoteError {
            msg: error.msg.clone(),
            labels: error
                .labels
                .iter()
                .map(|label| RemoteLabel {
                    text: label.text.clone(),
                    span: relative_span(label.span, source_span),
                })
                .collect(),
            help: error.help.clone(),
            code: error.code.clone(),
            inner: error
                .inner
                .iter()
                .map(|inner| {
                    Self::from_labeled(
                        &nu_protocol::LabeledError::from_diagnostic(inner),
                        source_span,
                    )
                })
                .collect(),
            kind: ErrorKind::Failed,
        }
    }
}

fn relative_span(span: Span, source: Span) -> Option<(usize, usize)> {
    (span.start >= source.start && span.end <= source.end && span.start <= span.end)
        .then(|| (span.start - source.start, span.end - source.start))
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for RemoteError {}
