//! The sessions this `nu` process knows, with their local ids and connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use nu_session_client::{Host, Link, Notice, OutputBuffering, SessionHandle, SessionInfo};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Opened,
    Disconnected,
    Broken,
    Closed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Opened => "Opened",
            SessionState::Disconnected => "Disconnected",
            SessionState::Broken => "Broken",
            SessionState::Closed => "Closed",
        }
    }

    pub const ALL: [SessionState; 4] = [
        SessionState::Opened,
        SessionState::Disconnected,
        SessionState::Broken,
        SessionState::Closed,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    Busy,
    None,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "Available",
            Availability::Busy => "Busy",
            Availability::None => "None",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Local,
    Ssh,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Local => "Local",
            TransportKind::Ssh => "SSH",
        }
    }
}

pub struct Session {
    pub id: i64,
    pub name: String,
    pub computer_name: String,
    pub transport: TransportKind,
    pub instance_id: Uuid,
    pub configuration_name: String,
    pub user: String,
    pub port: Option<u16>,
    pub idle_timeout: Duration,
    pub output_buffering: OutputBuffering,
    pub created: DateTime<Utc>,
    pub disconnected_on: Option<DateTime<Utc>>,
    pub host: Host,
    /// The attached connection, while there is one.
    pub handle: Option<SessionHandle>,
    /// Closed by `remove-session` (or found deleted on its host).
    pub closed: bool,
    /// Removed with `remove-session`: hidden from listings, still found by id or instance id.
    pub removed: bool,
    /// Invocations running through this process right now.
    pub running: Arc<AtomicUsize>,
    /// Not attached here, and the host says another client is attached.
    pub attached_elsewhere: bool,
    /// `enter-session` has its prompt in this session: it cannot be disconnected meanwhile.
    pub interactive: bool,
}

impl Session {
    pub fn from_info(
        id: i64,
        info: SessionInfo,
        computer_name: String,
        transport: TransportKind,
        port: Option<u16>,
        host: Host,
        handle: Option<SessionHandle>,
    ) -> Session {
        if let Some(handle) = &handle {
            watch(handle, id, &info.name, &computer_name);
        }
        Session {
            id,
            name: info.name,
            computer_name,
            transport,
            instance_id: info.instance_id,
            configuration_name: info.configuration_name,
            user: info.user,
            port,
            idle_timeout: info.idle_timeout,
            output_buffering: info.output_buffering,
            created: info.created,
            disconnected_on: info.disconnected_on,
            host,
            handle,
            closed: false,
            removed: false,
            running: Arc::new(AtomicUsize::new(0)),
            attached_elsewhere: false,
            interactive: false,
        }
    }

    /// Takes in what the host says about the session now (attached elsewhere only when it is
    /// not attached here).
    pub fn update(&mut self, info: &SessionInfo) {
        self.idle_timeout = info.idle_timeout;
        self.output_buffering = info.output_buffering;
        self.disconnected_on = info.disconnected_on;
        self.attached_elsewhere = self.handle.is_none() && info.attached;
    }

    /// Attached here: the connection and what the host said.
    pub fn attached(&mut self, handle: SessionHandle) {
        watch(&handle, self.id, &self.name, &self.computer_name);
        let info = handle.info();
        self.handle = Some(handle);
        self.update(&info);
    }

    /// Detached on purpose: the session runs on, on its host.
    pub fn detached(&mut self, info: &SessionInfo) {
        self.handle = None;
        self.update(info);
    }

    pub fn state(&self) -> SessionState {
        if self.closed || self.handle.as_ref().is_some_and(|h| h.has_ended()) {
            SessionState::Closed
        } else {
            match self.handle.as_ref().map(|h| h.link()) {
                Some(Link::Up) => SessionState::Opened,
                Some(Link::Reconnecting) => SessionState::Broken,
                Some(Link::Ended(_)) => SessionState::Closed,
                // Given up: the session runs on, disconnected, on its host.
                Some(Link::Down(_) | Link::Detached) | None => SessionState::Disconnected,
            }
        }
    }

    pub fn availability(&self) -> Availability {
        match self.state() {
            SessionState::Opened if self.running.load(Ordering::SeqCst) > 0 => Availability::Busy,
            SessionState::Opened => Availability::Available,
            SessionState::Disconnected if self.attached_elsewhere => Availability::Busy,
            _ => Availability::None,
        }
    }

    pub fn expires_on(&self) -> Option<DateTime<Utc>> {
        match self.state() {
            // A timeout too large for a date (a host may say anything) has no end date.
            SessionState::Disconnected => self.disconnected_on.and_then(|d| {
                chrono::Duration::from_std(self.idle_timeout)
                    .ok()
                    .and_then(|t| d.checked_add_signed(t))
            }),
            _ => None,
        }
    }

    /// Marks the session closed and lets go of its connection.
    pub fn close(&mut self) {
        self.closed = true;
        if let Some(handle) = self.handle.take() {
            handle.close();
        }
    }
}

#[derive(Default)]
pub struct SessionTable {
    last_id: i64,
    sessions: IndexMap<i64, Session>,
}

impl SessionTable {
    /// The next local id: counting up from 1, never reused.
    pub fn next_id(&mut self) -> i64 {
        self.last_id += 1;
        self.last_id
    }

    pub fn insert(&mut self, session: Session) {
        self.sessions.insert(session.id, session);
    }

    pub fn get(&self, id: i64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// The session with this instance id, removed ones included.
    pub fn by_instance_id(&mut self, instance_id: Uuid) -> Option<&mut Session> {
        self.sessions
            .values_mut()
            .find(|s| s.instance_id == instance_id)
    }

    /// Every session, removed ones included, in id order.
    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.sessions.values_mut()
    }

    /// The records of the sessions `ids` (those that exist), in that order.
    pub fn records(&self, ids: &[i64], span: nu_protocol::Span) -> Vec<nu_protocol::Value> {
        ids.iter()
            .filter_map(|id| self.get(*id))
            .map(|s| crate::record::session_record(s, span))
            .collect()
    }

    /// The sessions `get-session` lists: all but the removed ones.
    pub fn listed(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().filter(|s| !s.removed)
    }

    /// Whether any session still needs this process to stay alive.
    pub fn has_live(&self) -> bool {
        self.sessions
            .values()
            .any(|s| s.state() != SessionState::Closed)
    }
}

/// Tells the user on stderr what happens to the session's connection (printed by the plugin
/// while the command that uses the session runs, or between commands).
fn watch(handle: &SessionHandle, id: i64, name: &str, computer_name: &str) {
    let who = format!("session {id} ({name}) on {computer_name}");
    handle.on_notice(Arc::new(move |notice| {
        let line = match notice {
            Notice::Interrupted { retry_for, error } => format!(
                "warning: the connection to {who} was interrupted ({error}); reconnecting for up to {}s...",
                retry_for.as_secs()
            ),
            Notice::Restored { after } => format!(
                "the connection to {who} broke and is restored (after {:.1}s); output resumes where it stopped",
                after.as_secs_f64()
            ),
            Notice::GaveUp { reason } => format!(
                "warning: {who}: {reason}. It keeps running there, disconnected: `connect-session {id}` reconnects it, `receive-session {id}` collects its output"
            ),
            Notice::Ended { reason } => format!("warning: {who} has ended: {reason}"),
        };
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }));
}
