//! An attached session: [`SessionHandle`] sends invocations and interrupts; a reader task
//! receives the session's output, each invocation's its own stream, and the consumers take it:
//! a [`Call`] its invocation's, a [`Receive`] the backlog's (invocations started elsewhere, or
//! sent with [`SessionHandle::invoke_detached`]).
//!
//! Exactly-once output: the host keeps every event until this client acknowledges it, and this
//! client acknowledges what was *consumed* (handed on by a consumer, or given up here), never
//! what merely arrived ([`ledger`]). Events that arrived but were not consumed when the client
//! goes away are sent again to the next client that attaches. Flow control is per invocation:
//! the host sends an invocation's output only as far as this client has room for it
//! ([`WINDOW`]), so a reader never waits for a slow consumer, one invocation's unread output
//! never holds back another's, and a host cannot make this client hold more than that.
//!
//! Broken connections: when the connection fails without a disconnect, a supervisor task
//! reattaches with backoff (the same client takes over its old attachment on the host), resumes
//! each invocation's output after the last event received, and sends again the invocations and
//! interrupts the host may not have received (it ignores an invocation id it has seen). Calls
//! simply wait meanwhile. If it gives up, the session is left disconnected on its host; if the
//! host says the session is gone (its worker crashed), the calls end with the reason.
//!
//! The jobs are in rooms of their own: this module has the handle and the state it shares with
//! them; `ledger` what arrived, was taken, consumed and acknowledged (pure); `consume` the
//! consumers ([`Call`], [`Receive`]); `route` the reader; `supervise` the connection and
//! reconnecting. What the connection is doing ([`LinkState`]) is a `watch` value: anyone can
//! subscribe ([`SessionHandle::watch_link`]) instead of polling.

mod consume;
mod ledger;
mod route;
mod supervise;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nu_protocol::Value;
use nu_session_protocol::{
    Attachment, Binding, BytesKind, ClientMessage, ErrorKind, HostMessage, Invocation,
    OutputBuffering, RemoteError, SessionInfo, value_weight,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use consume::{Call, Handover, Next, Receive};
use ledger::{Ledger, Owner};

use crate::transport::Wire;
use crate::{ClientError, Host};

/// One event of an invocation, in order: `Started`, then values and output, then `Finished`.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// `stream` is false when the code produced a single value (or nothing); `bytes` is set
    /// when its result is a byte stream, whose pieces follow as [`CallEvent::Bytes`].
    Started {
        stream: bool,
        bytes: Option<BytesKind>,
    },
    Value(Value),
    /// A piece of a byte stream result.
    Bytes(Vec<u8>),
    /// Bytes the session printed while this invocation ran.
    Output {
        stderr: bool,
        bytes: Vec<u8>,
    },
    Finished(Option<RemoteError>),
    /// The host discarded this many older values or pieces of output to make room (output
    /// buffering `Drop`).
    Dropped(u64),
}

impl CallEvent {
    /// What the event takes in memory, about (as [`nu_session_protocol::EventBody::cost`]).
    fn cost(&self) -> usize {
        use nu_session_protocol::EVENT_COST;
        match self {
            CallEvent::Value(value) => nu_session_protocol::value_cost(value),
            CallEvent::Bytes(bytes) | CallEvent::Output { bytes, .. } => EVENT_COST + bytes.len(),
            CallEvent::Finished(Some(error)) => EVENT_COST + error.weight(),
            _ => EVENT_COST,
        }
    }
}

/// How much of one invocation's output (by [`nu_session_protocol::EventBody::cost`], about
/// what it takes in memory) the host may send this client before it has been consumed.
pub const WINDOW: usize = 8 << 20;

/// The window of a call whose consumer holds its values before handing them on (see
/// [`Call::defer_acks`]): as much as a result delivered to `nu` as one list may hold.
pub const HELD_WINDOW: usize = 256 << 20;

/// The most output all invocations together may hold here: more is a broken or hostile host.
const TOTAL_LIMIT: usize = 512 << 20;

/// How long an interrupted call waits for its session to stop before it gives up.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The most output printed between invocations (a background job's) kept for the next one.
pub const LOOSE_LIMIT: usize = 1 << 20;

/// Values taken are consumed only once this many more have been taken after them: Nushell's
/// plugin protocol keeps up to 100 stream items in flight between the plugin and the engine,
/// so a value is consumed only when the engine has surely taken it. A client killed
/// mid-stream therefore loses nothing; the next client may get the last few again.
const ACK_LAG: usize = 128;

/// Likewise for a byte stream: Nushell keeps up to 50 pieces of 8 KiB in flight.
const BYTES_LAG: usize = 1 << 20;

/// A consumer that has waited this long for the next event consumes what it holds back.
const RELEASE_AFTER: Duration = Duration::from_millis(50);

/// Reconnect attempts: the first at once, then after this, doubling up to [`MAX_RETRY_DELAY`]
/// (about once a second, as PowerShell does).
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// One reconnect attempt (SSH handshake and attach included) gets this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a handle's connection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Up,
    /// The connection failed without a disconnect; reconnecting.
    Reconnecting,
    /// Reconnecting did not succeed (why): the session runs on, disconnected, on its host.
    Down(String),
    /// Disconnected on purpose.
    Detached,
    /// The session ended on its host (why).
    Ended(String),
}

/// What happened to a handle's connection, for telling the user.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The connection failed (`error`); reconnecting for up to `retry_for`.
    Interrupted { error: String, retry_for: Duration },
    /// Attached again, `after` the failure; missed output follows.
    Restored { after: Duration },
    /// Reconnecting did not succeed; the session is left disconnected on its host.
    GaveUp { reason: String },
    /// The host says the session is gone.
    Ended { reason: String },
}

/// Told about every [`Notice`] of a handle.
pub type Notify = Arc<dyn Fn(Notice) + Send + Sync>;

tokio::task_local! {
    /// Set for the tasks that keep sessions connected on their own (reattaching), which must
    /// never ask the user anything.
    static BACKGROUND: ();
}

/// Whether this runs in a session's own background task (see [`BACKGROUND`]).
pub(crate) fn in_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

/// A handle's connection as a `watch` value: what it does, and how many times it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub link: Link,
    /// Failures so far, including those it recovered from (however quickly).
    pub breaks: u64,
}

/// A subscription to a handle's [`LinkState`], for a thread outside the client's runtime.
pub struct LinkWatch {
    rx: watch::Receiver<LinkState>,
    runtime: Handle,
    stop: Arc<tokio::sync::Notify>,
}

impl LinkWatch {
    /// Blocks until the link's state satisfies `until` (true), or [`LinkWatch::stopper`] is
    /// called (false).
    pub fn wait_until(&mut self, mut until: impl FnMut(&LinkState) -> bool) -> bool {
        let (rx, stop) = (&mut self.rx, self.stop.clone());
        self.runtime.block_on(async {
            tokio::select! {
                met = rx.wait_for(|state| until(state)) => met.is_ok(),
                _ = stop.notified() => false,
            }
        })
    }

    /// Ends a [`LinkWatch::wait_until`] in progress (or the next one) from another thread.
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let stop = self.stop.clone();
        move || stop.notify_one()
    }
}

/// An event of the backlog, with the invocation it belongs to.
pub type BacklogEvent = (Option<u64>, CallEvent);

#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<Inner>,
}

enum Outgoing {
    Message(ClientMessage),
    /// Close the connection (after a disconnect).
    Close,
}

struct Inner {
    host: Host,
    instance_id: Uuid,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    state: Mutex<State>,
    /// Consumers wait here for output (or the end of the connection).
    arrived: Condvar,
    /// What the connection does (the session's end included: it is said only here).
    link: watch::Sender<LinkState>,
    /// What the host said when this client (last) attached.
    attachment: Mutex<Attachment>,
    runtime: Handle,
    notify: Mutex<Vec<Notify>>,
}

struct State {
    /// Each invocation's output: arrived, taken, consumed, acknowledged.
    ledger: Ledger,
    /// Invocations sent that the host has not shown it received yet (no event for them): sent
    /// again after a reconnect unless the host says it has them.
    unconfirmed: BTreeMap<u64, Invocation>,
    /// Invocations asked to stop that have not finished: asked again after a reconnect.
    interrupted: HashSet<u64>,
    /// Calls that end with this error instead of their own end (the host refused them, or an
    /// interrupt was not honoured in time).
    failed: HashMap<u64, RemoteError>,
    /// A receive is in progress (one at a time).
    receiving: bool,
    /// Consumers waiting on `arrived`.
    waiting: usize,
    /// Waiting for the answer to a request (a disconnect).
    reply: Option<oneshot::Sender<HostMessage>>,
}

impl State {
    /// Takes the ledger's messages and sends them.
    fn send(&mut self, outgoing: &mpsc::UnboundedSender<Outgoing>) {
        for message in self.ledger.messages() {
            let _ = outgoing.send(Outgoing::Message(message));
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what the ledger says to send; wakes the consumers (output arrived, or the link
    /// changed).
    fn settle(&self, mut state: MutexGuard<'_, State>) {
        state.send(&self.outgoing);
        // Waking nobody costs a system call per value: only when someone waits.
        let wake = state.waiting > 0;
        drop(state);
        if wake {
            self.arrived.notify_all();
        }
    }

    fn link(&self) -> Link {
        self.link.borrow().link.clone()
    }

    fn set_link(&self, link: Link) {
        self.link.send_modify(|state| state.link = link);
        self.arrived.notify_all();
    }

    /// Moves the link from `from` to `to`; false (and nothing changes) when it was not `from`.
    fn set_link_from(&self, from: Link, to: Link) -> bool {
        let moved = self.link.send_if_modified(|state| {
            let moves = state.link == from;
            if moves {
                state.link = to;
            }
            moves
        });
        self.arrived.notify_all();
        moved
    }

    /// The connection failed: counted, and reconnecting. False when it was not up (closed,
    /// disconnected or ended meanwhile): nothing to reconnect.
    fn broke(&self) -> bool {
        self.link.send_if_modified(|state| {
            let up = state.link == Link::Up;
            if up {
                state.link = Link::Reconnecting;
                state.breaks += 1;
            }
            up
        })
    }

    /// The host said the session ended (its code called `exit`, or its worker is gone).
    fn end(&self, reason: &str) {
        let reason = reason.strip_prefix("the session ended: ").unwrap_or(reason);
        self.set_link(Link::Ended(reason.to_string()));
    }

    fn attachment(&self) -> MutexGuard<'_, Attachment> {
        self.attachment.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, notice: Notice) {
        let subscribers = self
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for notify in subscribers {
            notify(notice.clone());
        }
    }

    /// Whether messages can still be sent: now, or once reconnected.
    fn usable(&self) -> bool {
        matches!(self.link(), Link::Up | Link::Reconnecting)
    }

    /// Why nothing more can be sent or received.
    fn lost_error(&self) -> ClientError {
        match &self.link() {
            Link::Down(reason) => ClientError::Transport {
                msg: format!("the connection to the session was lost: {reason}"),
                help: Some(
                    "the session keeps running on its host: `connect-session` reconnects it, `receive-session` collects its output"
                        .into(),
                ),
            },
            Link::Ended(reason) => ended_error(reason).into(),
            Link::Detached => ClientError::Transport {
                msg: "the session was disconnected".into(),
                help: Some("`connect-session` reconnects it".into()),
            },
            Link::Up | Link::Reconnecting => ClientError::lost(),
        }
    }

    /// Asks the host to stop `call_id`; asked again after a reconnect until it finishes.
    fn interrupt(&self, call_id: u64) {
        self.state().interrupted.insert(call_id);
        let _ = self
            .outgoing
            .send(Outgoing::Message(ClientMessage::Interrupt { call_id }));
    }

    /// Interrupts a call the user waits on: if the host has not finished it [`STOP_GRACE`]
    /// later (code stuck where interrupts are not checked, a broken host), the call ends with
    /// an error and is given up, so Ctrl-C always gives the user their prompt back.
    fn interrupt_waited(self: &Arc<Self>, call_id: u64) {
        self.interrupt(call_id);
        let inner = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            let mut state = inner.state();
            if !state.interrupted.contains(&call_id) || state.ledger.ended(call_id) {
                return;
            }
            let error = RemoteError::new(
                ErrorKind::Interrupted,
                format!(
                    "interrupted, but the session did not stop within {} s: the code goes on running there",
                    STOP_GRACE.as_secs()
                ),
            )
            .with_help("its output is discarded; the next invocation waits for it to end, or remove-session stops it for good");
            state.failed.insert(call_id, error);
            inner.settle(state);
        });
    }
}

impl SessionHandle {
    pub(crate) fn start(host: Host, conn: Wire, attachment: Attachment) -> SessionHandle {
        let (outgoing, to_send) = mpsc::unbounded_channel::<Outgoing>();
        let runtime = host.runtime().clone();
        let mut ledger = Ledger::new(WINDOW, TOTAL_LIMIT, LOOSE_LIMIT);
        // A new handle has no invocations yet: every one the host keeps output of, or runs,
        // is the backlog's.
        for call_id in attachment.kept.iter().chain(&attachment.pending_calls) {
            ledger.expect(*call_id, Owner::Backlog);
        }
        let inner = Arc::new(Inner {
            instance_id: attachment.info.instance_id,
            host,
            outgoing,
            state: Mutex::new(State {
                ledger,
                unconfirmed: BTreeMap::new(),
                interrupted: HashSet::new(),
                failed: HashMap::new(),
                receiving: false,
                waiting: 0,
                reply: None,
            }),
            arrived: Condvar::new(),
            link: watch::Sender::new(LinkState {
                link: Link::Up,
                breaks: 0,
            }),
            attachment: Mutex::new(attachment),
            runtime: runtime.clone(),
            notify: Mutex::new(Vec::new()),
        });
        runtime.spawn(BACKGROUND.scope((), supervise::supervise(inner.clone(), conn, to_send)));
        SessionHandle { inner }
    }

    /// The session as the host described it when this client (last) attached.
    pub fn info(&self) -> SessionInfo {
        self.inner.attachment().info.clone()
    }

    /// What the host said when this client (last) attached.
    pub fn attachment(&self) -> Attachment {
        self.inner.attachment().clone()
    }

    /// Whether the connection is up (not reconnecting, given up, detached or ended).
    pub fn is_alive(&self) -> bool {
        self.inner.link() == Link::Up
    }

    /// How many times the connection has failed so far, including failures it recovered from
    /// (however quickly).
    pub fn breaks(&self) -> u64 {
        self.inner.link.borrow().breaks
    }

    /// What the connection is doing.
    pub fn link(&self) -> Link {
        self.inner.link()
    }

    /// A subscription to what the connection does.
    pub fn watch_link(&self) -> LinkWatch {
        LinkWatch {
            rx: self.inner.link.subscribe(),
            runtime: self.inner.runtime.clone(),
            stop: Arc::default(),
        }
    }

    /// Lets go of the session without disconnecting it on purpose (it is being removed, or this
    /// client forgets it): the connection closes and is not re-established.
    pub fn close(&self) {
        self.inner.link.send_if_modified(|state| {
            let ended = matches!(state.link, Link::Ended(_));
            if !ended {
                state.link = Link::Detached;
            }
            !ended
        });
        self.inner.arrived.notify_all();
        let _ = self.inner.outgoing.send(Outgoing::Close);
    }

    /// `notify` is told (as well as any told before) when the connection fails, comes back,
    /// or is given up.
    pub fn on_notice(&self, notify: Notify) {
        self.inner
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notify);
    }

    /// Whether the host said the session ended; it no longer exists there.
    pub fn has_ended(&self) -> bool {
        matches!(self.inner.link(), Link::Ended(_))
    }

    /// Why the session ended, when the host said.
    pub fn end_reason(&self) -> Option<String> {
        match self.inner.link() {
            Link::Ended(reason) => Some(reason),
            _ => None,
        }
    }

    /// Sends now, or once reconnected.
    fn send(&self, message: ClientMessage) -> Result<(), ClientError> {
        if !self.inner.usable() {
            return Err(self.inner.lost_error());
        }
        self.inner
            .outgoing
            .send(Outgoing::Message(message))
            .map_err(|_| ClientError::lost())
    }

    /// Starts running `source` in the session; its events arrive through the returned [`Call`].
    /// Invocations run one at a time, in the order sent.
    pub fn invoke(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
    ) -> Result<Call, ClientError> {
        let call_id = self.start_invocation(source, bindings, input, Owner::Call)?;
        Ok(Call::new(call_id, self.inner.clone()))
    }

    /// Starts running `source` without waiting for its output: it stays on the host for
    /// [`SessionHandle::receive`] (here or in another client).
    pub fn invoke_detached(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
    ) -> Result<u64, ClientError> {
        self.start_invocation(source, bindings, input, Owner::Backlog)
    }

    /// Sends a new invocation, its output going to `owner`, kept until the host shows it has
    /// it; its id. The id is taken and the message queued under the session's lock: the host
    /// ignores an id not above the last it saw (a resend after a reconnect), so invocations from
    /// several threads must leave in the order of their ids.
    fn start_invocation(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
        owner: Owner,
    ) -> Result<u64, ClientError> {
        if !self.inner.usable() {
            return Err(self.inner.lost_error());
        }
        let mut state = self.inner.state();
        let call_id = self
            .inner
            .host
            .shared()
            .next_call
            .fetch_add(1, Ordering::SeqCst);
        let invocation = Invocation {
            call_id,
            source,
            bindings,
            input,
        };
        let message = ClientMessage::Invoke(invocation.clone());
        check_size(&message, &invocation)?;
        if self
            .inner
            .outgoing
            .send(Outgoing::Message(message))
            .is_err()
        {
            return Err(ClientError::lost());
        }
        state.unconfirmed.insert(call_id, invocation);
        state.ledger.expect(call_id, owner);
        Ok(call_id)
    }

    /// Detaches from the session, which keeps running on the host, with new settings when
    /// given. Output not consumed here stays on the host. The handle is dead afterwards.
    pub fn disconnect(
        &self,
        idle_timeout: Option<Duration>,
        output_buffering: Option<OutputBuffering>,
    ) -> Result<SessionInfo, ClientError> {
        if self.inner.link() == Link::Reconnecting {
            return Err(ClientError::Transport {
                msg: "the connection to the session is broken and being re-established".into(),
                help: Some("try again once it is back (get-session shows Opened)".into()),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.inner.state().reply = Some(tx);
        self.send(ClientMessage::Disconnect {
            idle_timeout,
            output_buffering,
        })?;
        let reply = rx.blocking_recv().map_err(|_| ClientError::lost())?;
        match reply {
            HostMessage::Disconnected(info) => {
                self.inner.set_link(Link::Detached);
                let _ = self.inner.outgoing.send(Outgoing::Close);
                Ok(info)
            }
            HostMessage::Error(error) => Err(error.into()),
            other => Err(ClientError::transport(
                "unexpected answer from the session",
                format!("{other:?}"),
            )),
        }
    }

    /// The output of invocations this handle did not start, as it arrives, until every such
    /// invocation known now has finished and its output has been delivered. One receive at a
    /// time per handle.
    pub fn receive(&self) -> Result<Receive, ClientError> {
        let mut state = self.inner.state();
        if state.receiving {
            return Err(ClientError::transport(
                "cannot receive",
                "another receive is in progress",
            ));
        }
        state.receiving = true;
        let loose = state.ledger.take_loose();
        drop(state);
        Ok(Receive::new(self.inner.clone(), loose))
    }
}

/// What a call learns when its session ended on its host.
fn ended_error(reason: &str) -> RemoteError {
    RemoteError::new(ErrorKind::Ended, format!("the session has ended: {reason}"))
}

/// Refuses an invocation whose message would be over the limit, before it is queued: the
/// writer would otherwise fail to send it and the call wait forever. Measured exactly only when
/// its values are large enough to matter.
fn check_size(message: &ClientMessage, invocation: &Invocation) -> Result<(), ClientError> {
    let weight = invocation.input.as_ref().map_or(0, value_weight)
        + invocation
            .bindings
            .iter()
            .map(|b| value_weight(&b.value))
            .sum::<usize>()
        + invocation.source.len();
    if weight < nu_session_protocol::max_message_len() / 4 {
        return Ok(());
    }
    match nu_session_protocol::encode_frame(message) {
        Ok(_) => Ok(()),
        Err(error) => Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!("cannot send the code and its input: {error}"),
        )
        .with_help(format!(
            "the limit is {} here (bytes; default 1 GiB)",
            crate::MAX_MESSAGE_ENV
        ))
        .into()),
    }
}
