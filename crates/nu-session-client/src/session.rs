//! An attached session: [`SessionHandle`] sends invocations and interrupts; a reader task
//! receives the session's numbered output and hands each invocation's events to its [`Call`].
//!
//! Exactly-once output: the host keeps every event until it is acknowledged, and this client
//! acknowledges an event only once it has been *consumed* (handed to the user by a [`Call`] or a
//! [`Receive`], or discarded because its call was abandoned here). Events that arrived but were
//! not consumed when the client goes away are sent again to the next client that attaches.
//!
//! Output of invocations this handle did not start (started by another client, or sent with
//! [`SessionHandle::invoke_detached`]) is kept for [`SessionHandle::receive`].
//!
//! Broken connections: when the connection fails without a disconnect, a supervisor task
//! reattaches with backoff (the same client takes over its old attachment on the host), resumes
//! the output after the last event received, and sends again the invocations and interrupts the
//! host may not have received (it ignores an invocation id it has seen). Calls simply wait
//! meanwhile. If it gives up, the session is left disconnected on its host; if the host says the
//! session is gone (its worker crashed), the calls end with the reason.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use nu_protocol::Value;
use nu_session_protocol::{
    Attachment, Binding, ClientMessage, ErrorKind, Event, EventBody, HostMessage, Invocation,
    OutputBuffering, RemoteError, SessionInfo,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::transport::Connection;
use crate::{ClientError, Host};

/// One event of an invocation, in order: `Started`, then values and output, then `Finished`.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// `stream` is false when the code produced a single value (or nothing).
    Started {
        stream: bool,
    },
    Value(Value),
    /// Bytes the session printed while this invocation ran.
    Output {
        stderr: bool,
        bytes: Vec<u8>,
    },
    Finished(Option<RemoteError>),
    /// The host discarded this many older events to make room (output buffering `Drop`).
    Dropped(u64),
}

/// Events consumed here are acknowledged only once this many more have been consumed after them:
/// Nushell's plugin protocol keeps up to 100 stream items in flight between the plugin and the
/// engine, so an event is acknowledged only when the engine has surely taken it. A client killed
/// mid-stream therefore loses nothing; the next client may get the last few again.
const ACK_LAG: u64 = 128;

/// A consumer that has waited this long for the next event acknowledges what it holds back.
const RELEASE_AFTER: Duration = Duration::from_millis(50);

/// Batches of events per channel message keep the hand-over between threads cheap.
const CALL_CHANNEL_BATCHES: usize = 16;

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

/// Events handed over together, with the sequence numbers they span.
struct Batch<T> {
    first: u64,
    events: Vec<T>,
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
    link: Mutex<Link>,
    /// The host said the session ended (its code called `exit`, or its worker is gone).
    ended: AtomicBool,
    /// How many times the connection failed (reattached or not).
    breaks: std::sync::atomic::AtomicU64,
    /// What the host said when this client (last) attached.
    attachment: Mutex<Attachment>,
    runtime: Handle,
    /// The backlog's receiving end, while no [`Receive`] holds it.
    backlog: Mutex<Option<std::sync::mpsc::Receiver<Batch<BacklogEvent>>>>,
    notify: Mutex<Option<Notify>>,
}

struct State {
    calls: HashMap<u64, mpsc::Sender<Batch<CallEvent>>>,
    /// Invocations of ours that were given up before they finished: their output is discarded.
    abandoned: HashSet<u64>,
    /// Invocations sent that the host has not shown it received yet (no event for them): sent
    /// again after a reconnect unless the host says it has them.
    unconfirmed: BTreeMap<u64, Invocation>,
    /// Invocations asked to stop that have not finished: asked again after a reconnect.
    interrupted: HashSet<u64>,
    /// The highest sequence number received.
    received: u64,
    /// The highest sequence number acknowledged.
    acked: u64,
    /// Batches handed over and not consumed yet: first → last sequence number.
    outstanding: BTreeMap<u64, u64>,
    /// Waiting for the answer to a request (a disconnect).
    reply: Option<oneshot::Sender<HostMessage>>,
    /// Dropped events not reported yet.
    dropped: u64,
    /// A call was forgotten: this client is going away and acknowledges nothing more.
    forgotten: bool,
    /// Invocations of other clients that were running or queued when this client attached and
    /// whose end has not been handed to the backlog yet.
    foreign_pending: HashSet<u64>,
    backlog: std::sync::mpsc::Sender<Batch<BacklogEvent>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_link(&self, link: Link) {
        *self.link() = link;
    }

    fn attachment(&self) -> MutexGuard<'_, Attachment> {
        self.attachment.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, notice: Notice) {
        let notify = self
            .notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(notify) = notify {
            notify(notice);
        }
    }

    /// Whether messages can still be sent: now, or once reconnected.
    fn usable(&self) -> bool {
        matches!(*self.link(), Link::Up | Link::Reconnecting)
    }

    /// Why nothing more can be sent or received.
    fn lost_error(&self) -> ClientError {
        match &*self.link() {
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

    /// A batch was consumed: acknowledge what can be.
    fn consumed(&self, first: u64) {
        let mut state = self.state();
        state.outstanding.remove(&first);
        self.acknowledge(&mut state);
    }

    /// Acknowledges everything received up to the oldest batch not consumed yet.
    fn acknowledge(&self, state: &mut State) {
        if state.forgotten {
            return;
        }
        let upto = match state.outstanding.keys().next() {
            Some(first) => first - 1,
            None => state.received,
        };
        if upto > state.acked {
            state.acked = upto;
            let _ = self
                .outgoing
                .send(Outgoing::Message(ClientMessage::Ack { seq: upto }));
        }
    }
}

impl SessionHandle {
    pub(crate) fn start(
        host: Host,
        conn: Connection,
        attachment: Attachment,
        resumed_from: u64,
    ) -> SessionHandle {
        let (outgoing, to_send) = mpsc::unbounded_channel::<Outgoing>();
        let (backlog_tx, backlog_rx) = std::sync::mpsc::channel();
        let runtime = host.runtime().clone();
        let foreign_pending = attachment.pending_calls.iter().copied().collect();
        let inner = Arc::new(Inner {
            instance_id: attachment.info.instance_id,
            host,
            outgoing,
            state: Mutex::new(State {
                calls: HashMap::new(),
                abandoned: HashSet::new(),
                unconfirmed: BTreeMap::new(),
                interrupted: HashSet::new(),
                // Events up to the host's acknowledged mark are gone: nothing to wait for there.
                received: resumed_from.max(attachment.acked),
                acked: resumed_from.max(attachment.acked),
                outstanding: BTreeMap::new(),
                reply: None,
                dropped: 0,
                forgotten: false,
                // A new handle has no invocations yet: every pending one is another client's.
                foreign_pending,
                backlog: backlog_tx,
            }),
            link: Mutex::new(Link::Up),
            ended: AtomicBool::new(false),
            breaks: std::sync::atomic::AtomicU64::new(0),
            attachment: Mutex::new(attachment),
            runtime: runtime.clone(),
            backlog: Mutex::new(Some(backlog_rx)),
            notify: Mutex::new(None),
        });
        runtime.spawn(supervise(inner.clone(), conn, to_send));
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
        *self.inner.link() == Link::Up
    }

    /// How many times the connection has failed so far, including failures it recovered from
    /// (however quickly).
    pub fn breaks(&self) -> u64 {
        self.inner.breaks.load(Ordering::SeqCst)
    }

    /// What the connection is doing.
    pub fn link(&self) -> Link {
        self.inner.link().clone()
    }

    /// Lets go of the session without disconnecting it on purpose (it is being removed, or this
    /// client forgets it): the connection closes and is not re-established.
    pub fn close(&self) {
        {
            let mut link = self.inner.link();
            if !matches!(*link, Link::Ended(_)) {
                *link = Link::Detached;
            }
        }
        let _ = self.inner.outgoing.send(Outgoing::Close);
    }

    /// `notify` is told when the connection fails, comes back, or is given up.
    pub fn on_notice(&self, notify: Notify) {
        *self.inner.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some(notify);
    }

    /// Whether the host said the session ended; it no longer exists there.
    pub fn has_ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    /// Why the session ended, when the host said.
    pub fn end_reason(&self) -> Option<String> {
        match &*self.inner.link() {
            Link::Ended(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// The last event number received (for resuming on another connection).
    pub fn last_seq(&self) -> u64 {
        self.inner.state().received
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

    fn new_call_id(&self) -> u64 {
        self.inner
            .host
            .shared()
            .next_call
            .fetch_add(1, Ordering::SeqCst)
    }

    /// Sends an invocation, kept until the host shows it has it.
    fn send_invocation(&self, invocation: Invocation) -> Result<(), ClientError> {
        let call_id = invocation.call_id;
        self.inner
            .state()
            .unconfirmed
            .insert(call_id, invocation.clone());
        let sent = self.send(ClientMessage::Invoke(invocation));
        if sent.is_err() {
            self.inner.state().unconfirmed.remove(&call_id);
        }
        sent
    }

    /// Starts running `source` in the session; its events arrive through the returned [`Call`].
    /// Invocations run one at a time, in the order sent.
    pub fn invoke(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
    ) -> Result<Call, ClientError> {
        let call_id = self.new_call_id();
        let (tx, rx) = mpsc::channel(CALL_CHANNEL_BATCHES);
        self.inner.state().calls.insert(call_id, tx);
        let invocation = Invocation {
            call_id,
            source,
            bindings,
            input,
        };
        if let Err(e) = self.send_invocation(invocation) {
            self.inner.state().calls.remove(&call_id);
            return Err(e);
        }
        Ok(Call {
            id: call_id,
            rx,
            pending: VecDeque::new(),
            batch: None,
            lag: Lag::default(),
            session: self.inner.clone(),
            finished: false,
        })
    }

    /// Starts running `source` without waiting for its output: it stays on the host for
    /// [`SessionHandle::receive`] (here or in another client).
    pub fn invoke_detached(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
    ) -> Result<u64, ClientError> {
        let call_id = self.new_call_id();
        self.send_invocation(Invocation {
            call_id,
            source,
            bindings,
            input,
        })?;
        Ok(call_id)
    }

    /// Detaches from the session, which keeps running on the host, with new settings when
    /// given. Output not consumed here stays on the host. The handle is dead afterwards.
    pub fn disconnect(
        &self,
        idle_timeout: Option<Duration>,
        output_buffering: Option<OutputBuffering>,
    ) -> Result<SessionInfo, ClientError> {
        if *self.inner.link() == Link::Reconnecting {
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

    /// The output of invocations this handle did not start, as it arrives, until every
    /// invocation that was running or queued when this client attached has finished and every
    /// event that existed then has been delivered. One receive at a time per handle.
    pub fn receive(&self) -> Result<Receive, ClientError> {
        let rx = self
            .inner
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                ClientError::transport("cannot receive", "another receive is in progress")
            })?;
        let until_seq = self.inner.attachment().next_seq.saturating_sub(1);
        Ok(Receive {
            session: self.inner.clone(),
            rx: Some(rx),
            pending: VecDeque::new(),
            batch: None,
            lag: Lag::default(),
            until_seq,
        })
    }
}

/// One invocation's events, read with [`Call::next_event`] (blocking). Dropping an unfinished call
/// interrupts it on the host.
pub struct Call {
    id: u64,
    rx: mpsc::Receiver<Batch<CallEvent>>,
    pending: VecDeque<CallEvent>,
    /// The batch `pending` comes from (its first sequence number).
    batch: Option<u64>,
    lag: Lag,
    session: Arc<Inner>,
    finished: bool,
}

/// Consumed batches waiting [`ACK_LAG`] more events before they are acknowledged.
#[derive(Default)]
struct Lag {
    consumed: u64,
    held: VecDeque<(u64, u64)>,
}

impl Lag {
    fn event(&mut self) {
        self.consumed += 1;
    }

    /// `first`'s batch is consumed; acknowledges the batches far enough behind.
    fn batch_done(&mut self, session: &Inner, first: u64) {
        self.held.push_back((first, self.consumed));
        while let Some(&(first, at)) = self.held.front() {
            if at + ACK_LAG > self.consumed {
                break;
            }
            self.held.pop_front();
            session.consumed(first);
        }
    }

    /// The consumer waits for more: whatever it took has had time to reach the engine, and the
    /// host may be waiting for these acknowledgements to make room (output buffering `Block`).
    fn release_now(&mut self, session: &Inner) {
        if self.held.is_empty() {
            return;
        }
        let mut state = session.state();
        self.release(&mut state);
        session.acknowledge(&mut state);
    }

    /// Every held batch (the consumer is done, or gave up).
    fn release(&mut self, state: &mut State) {
        for (first, _) in self.held.drain(..) {
            state.outstanding.remove(&first);
        }
    }
}

impl Call {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event, waiting for it. An error means the connection was lost.
    pub fn next_event(&mut self) -> Result<CallEvent, ClientError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if matches!(event, CallEvent::Finished(_)) {
                    self.finished = true;
                }
                self.lag.event();
                return Ok(event);
            }
            if let Some(first) = self.batch.take() {
                self.lag.batch_done(&self.session, first);
            }
            let next = match self.rx.try_recv() {
                Ok(batch) => Some(batch),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let rx = &mut self.rx;
                    let waited = self
                        .session
                        .runtime
                        .block_on(async { tokio::time::timeout(RELEASE_AFTER, rx.recv()).await });
                    match waited {
                        Ok(next) => next,
                        Err(_) => {
                            self.lag.release_now(&self.session);
                            self.rx.blocking_recv()
                        }
                    }
                }
            };
            match next {
                Some(batch) => {
                    self.batch = Some(batch.first);
                    self.pending.extend(batch.events);
                }
                None => {
                    self.finished = true;
                    return Err(self.session.lost_error());
                }
            }
        }
    }

    /// Lets go of the invocation without stopping it, as if this client had vanished: it runs on
    /// in the session, and what this call did not hand on (including events held back for
    /// [`ACK_LAG`]) stays on the host for [`SessionHandle::receive`].
    pub fn forget(mut self) {
        self.finished = true;
        self.lag.held.clear();
        self.batch = None;
        let mut state = self.session.state();
        // Its output goes to the backlog from now on.
        state.calls.remove(&self.id);
        // Batches already handed to this call stay outstanding: never acknowledged here.
        self.rx.close();
        state.forgotten = true;
    }

    /// Asks the host to stop this invocation; its `Finished` event still follows.
    pub fn interrupt(&self) {
        self.session.interrupt(self.id);
    }

    /// A handle that can interrupt this call from another thread (a signal handler).
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let session = self.session.clone();
        let id = self.id;
        move || session.interrupt(id)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.session.interrupt(self.id);
            self.session.state().abandoned.insert(self.id);
        }
        if self.session.state().forgotten {
            // See `forget`: nothing more is acknowledged by this client.
            return;
        }
        // What this call still holds was given up by the user: it counts as consumed.
        let mut firsts: Vec<u64> = self.batch.take().into_iter().collect();
        self.session.state().calls.remove(&self.id);
        while let Ok(batch) = self.rx.try_recv() {
            firsts.push(batch.first);
        }
        let mut state = self.session.state();
        for first in firsts {
            state.outstanding.remove(&first);
        }
        self.lag.release(&mut state);
        self.session.acknowledge(&mut state);
    }
}

/// The backlog, read with [`Receive::next_event`]: output of invocations started elsewhere.
pub struct Receive {
    session: Arc<Inner>,
    rx: Option<std::sync::mpsc::Receiver<Batch<BacklogEvent>>>,
    pending: VecDeque<BacklogEvent>,
    batch: Option<u64>,
    lag: Lag,
    /// Every event up to this one existed when the client attached.
    until_seq: u64,
}

impl Receive {
    /// The next event with its invocation id; `Ok(None)` when everything is received.
    pub fn next_event(&mut self) -> Result<Option<BacklogEvent>, ClientError> {
        loop {
            if let Some((call_id, event)) = self.pending.pop_front() {
                self.lag.event();
                return Ok(Some((call_id, event)));
            }
            if let Some(first) = self.batch.take() {
                self.lag.batch_done(&self.session, first);
            }
            let Some(rx) = &self.rx else { return Ok(None) };
            match rx.try_recv() {
                Ok(batch) => {
                    self.batch = Some(batch.first);
                    self.pending.extend(batch.events);
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(self.session.lost_error());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            // Batches are queued before `received` moves past them, and before the invocations
            // they end leave `foreign_pending`: nothing is missed here.
            {
                let state = self.session.state();
                if state.foreign_pending.is_empty() && state.received >= self.until_seq {
                    return Ok(None);
                }
            }
            if !self.session.usable() {
                return Err(self.session.lost_error());
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(batch) => {
                    self.batch = Some(batch.first);
                    self.pending.extend(batch.events);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.lag.release_now(&self.session);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.session.lost_error());
                }
            }
        }
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        // Unread events stay on the host (they are not acknowledged) for the next receive; what
        // was read is acknowledged.
        let read: Vec<u64> = self.batch.take().into_iter().collect();
        {
            let mut state = self.session.state();
            for first in read {
                state.outstanding.remove(&first);
            }
            self.lag.release(&mut state);
            self.session.acknowledge(&mut state);
        }
        if let Some(rx) = self.rx.take() {
            *self
                .session
                .backlog
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(rx);
        }
    }
}

/// Where an event goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Destination {
    Call(u64),
    Backlog,
    Discard,
}

async fn read_events(mut stream: futures::stream::SplitStream<Connection>, inner: &Inner) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            HostMessage::Events(events) => {
                let Some(last) = events.last().map(|e| e.seq) else {
                    continue;
                };
                deliver(inner, events).await;
                let mut state = inner.state();
                state.received = state.received.max(last);
                inner.acknowledge(&mut state);
            }
            HostMessage::Dropped { count } => inner.state().dropped += count,
            HostMessage::Disconnected(_) => {
                if let Some(reply) = inner.state().reply.take() {
                    let _ = reply.send(message);
                }
            }
            HostMessage::Error(error) => {
                if let Some(reply) = inner.state().reply.take() {
                    let _ = reply.send(HostMessage::Error(error));
                    continue;
                }
                // Errors about requests without an answer of their own (an invocation sent
                // while not attached) end the current calls: nothing more will come for them.
                let senders: Vec<_> = inner.state().calls.drain().collect();
                for (_, sender) in senders {
                    let batch = Batch {
                        first: 0,
                        events: vec![CallEvent::Finished(Some(error.clone()))],
                    };
                    let _ = sender.send(batch).await;
                }
            }
            _ => {}
        }
    }
}

/// What a call learns when its session ended on its host.
fn ended_error(reason: &str) -> RemoteError {
    RemoteError::new(ErrorKind::Ended, format!("the session has ended: {reason}"))
}

/// Runs the handle's connection, and the next one each time it fails, until a disconnect, the
/// session's end, or giving up.
async fn supervise(
    inner: Arc<Inner>,
    mut conn: Connection,
    queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut first = Vec::new();
    loop {
        let (sink, stream) = conn.split();
        let writer = tokio::spawn(write_messages(
            sink,
            std::mem::take(&mut first),
            queue.clone(),
        ));
        read_events(stream, &inner).await;
        writer.abort();
        let _ = writer.await;
        // A request waiting for its answer will not get it on this connection.
        inner.state().reply = None;
        if *inner.link() != Link::Up || inner.ended.load(Ordering::SeqCst) {
            break;
        }
        match reconnect(&inner, &queue).await {
            Some((next, resend)) => {
                conn = next;
                first = resend;
            }
            None => break,
        }
    }
    let (calls, ended) = {
        let mut state = inner.state();
        let calls: Vec<_> = state.calls.drain().collect();
        (calls, inner.link().clone())
    };
    // Every waiting call learns the end: why the session ended, or (by its channel closing)
    // that the connection is gone.
    if let Link::Ended(reason) = ended {
        let error = ended_error(&reason);
        for (_, sender) in calls {
            let batch = Batch {
                first: 0,
                events: vec![CallEvent::Finished(Some(error.clone()))],
            };
            let _ = sender.send(batch).await;
        }
    }
}

async fn write_messages(
    mut sink: futures::stream::SplitSink<Connection, ClientMessage>,
    first: Vec<ClientMessage>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Outgoing>>>,
) {
    for message in first {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let mut queue = queue.lock().await;
    while let Some(Outgoing::Message(message)) = queue.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Attaches again after the connection failed, with backoff, for up to the client's
/// reconnect time. Returns the new connection and what to send on it first.
async fn reconnect(
    inner: &Arc<Inner>,
    queue: &tokio::sync::Mutex<mpsc::UnboundedReceiver<Outgoing>>,
) -> Option<(Connection, Vec<ClientMessage>)> {
    let retry_for = inner.host.shared().reconnect_for();
    let started = Instant::now();
    {
        let mut link = inner.link();
        if *link != Link::Up {
            // Closed or disconnected meanwhile.
            return None;
        }
        *link = Link::Reconnecting;
    }
    inner.breaks.fetch_add(1, Ordering::SeqCst);
    let mut delay = FIRST_RETRY_DELAY;
    let mut last_error;
    // The user hears of it once the first attempt (made at once) has failed: a session that
    // ended, or a connection back within moments, needs no warning first.
    let mut announced = false;
    loop {
        if *inner.link() != Link::Reconnecting {
            // Closed meanwhile.
            return None;
        }
        let resume = inner.state().received;
        let attempt = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            inner.host.attach_conn(inner.instance_id, Some(resume)),
        )
        .await;
        match attempt {
            Ok(Ok((conn, attachment))) => {
                let resend = resume_messages(inner, &attachment, queue).await;
                *inner.attachment() = attachment;
                {
                    let mut link = inner.link();
                    if *link != Link::Reconnecting {
                        return None;
                    }
                    *link = Link::Up;
                }
                inner.notify(Notice::Restored {
                    after: started.elapsed(),
                });
                return Some((conn, resend));
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Busy => {
                let reason = "another client connected to the session meanwhile".to_string();
                inner.set_link(Link::Down(reason.clone()));
                inner.notify(Notice::GaveUp { reason });
                return None;
            }
            Ok(Err(e)) => {
                last_error = e.to_string();
                // Asking whether the session is gone needs the host: not while it is
                // unreachable (that would double every attempt during an outage).
                let gone = if inner.host.transport().host_answers() {
                    tokio::time::timeout(ATTEMPT_TIMEOUT, inner.host.gone(inner.instance_id))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                } else {
                    None
                };
                if let Some(reason) = gone {
                    inner.ended.store(true, Ordering::SeqCst);
                    inner.set_link(Link::Ended(reason.clone()));
                    inner.notify(Notice::Ended { reason });
                    return None;
                }
            }
            Err(_) => {
                last_error = format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs());
            }
        }
        if !announced {
            announced = true;
            inner.notify(Notice::Interrupted {
                error: last_error.clone(),
                retry_for,
            });
        }
        if started.elapsed() + delay >= retry_for {
            let reason = format!(
                "could not reconnect within {}s ({last_error})",
                retry_for.as_secs()
            );
            inner.set_link(Link::Down(reason.clone()));
            inner.notify(Notice::GaveUp { reason });
            return None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// What to send first on a new connection: what the host may have missed. Messages queued
/// while the connection was down are dropped; they are all regenerated here.
async fn resume_messages(
    inner: &Inner,
    attachment: &Attachment,
    queue: &tokio::sync::Mutex<mpsc::UnboundedReceiver<Outgoing>>,
) -> Vec<ClientMessage> {
    {
        let mut queue = queue.lock().await;
        while queue.try_recv().is_ok() {}
    }
    let mut state = inner.state();
    let confirmed = attachment.last_call_from_client.unwrap_or(0);
    state.unconfirmed.retain(|id, _| *id > confirmed);
    let mut messages: Vec<ClientMessage> = state
        .unconfirmed
        .values()
        .cloned()
        .map(ClientMessage::Invoke)
        .collect();
    messages.extend(
        state
            .interrupted
            .iter()
            .map(|&call_id| ClientMessage::Interrupt { call_id }),
    );
    if state.acked > attachment.acked && !state.forgotten {
        messages.push(ClientMessage::Ack { seq: state.acked });
    }
    messages
}

/// Hands events to their calls or the backlog, one batch per run of the same destination.
async fn deliver(inner: &Inner, events: Vec<Event>) {
    let mut run: Vec<(u64, Option<u64>, CallEvent)> = Vec::new();
    let mut run_to = Destination::Discard;
    for event in events {
        let (call_id, call_event) = split(inner, event.body);
        let finished = matches!(call_event, CallEvent::Finished(_));
        let to = destination(inner, call_id, finished);
        if to != run_to && !run.is_empty() {
            hand_over(inner, run_to, std::mem::take(&mut run)).await;
        }
        run_to = to;
        if to != Destination::Discard {
            let dropped = std::mem::take(&mut inner.state().dropped);
            if dropped > 0 {
                run.push((event.seq, call_id, CallEvent::Dropped(dropped)));
            }
        }
        run.push((event.seq, call_id, call_event));
    }
    if !run.is_empty() {
        hand_over(inner, run_to, run).await;
    }
}

fn split(inner: &Inner, body: EventBody) -> (Option<u64>, CallEvent) {
    match body {
        EventBody::Started { call_id, stream } => (Some(call_id), CallEvent::Started { stream }),
        EventBody::Value { call_id, value } => (Some(call_id), CallEvent::Value(value)),
        EventBody::Output {
            call_id,
            stderr,
            bytes,
        } => (call_id, CallEvent::Output { stderr, bytes }),
        EventBody::Finished { call_id, error } => {
            if error.as_ref().is_some_and(|e| e.kind == ErrorKind::Ended) {
                inner.ended.store(true, Ordering::SeqCst);
            }
            (Some(call_id), CallEvent::Finished(error))
        }
    }
}

fn destination(inner: &Inner, call_id: Option<u64>, finished: bool) -> Destination {
    let Some(call_id) = call_id else {
        // Printed while no invocation ran (a background job): nobody to show it to.
        return Destination::Discard;
    };
    let mut state = inner.state();
    // An event of the invocation: the host has it.
    if !state.unconfirmed.is_empty() {
        state.unconfirmed.remove(&call_id);
    }
    if finished {
        state.interrupted.remove(&call_id);
    }
    if state.calls.contains_key(&call_id) {
        Destination::Call(call_id)
    } else if state.abandoned.contains(&call_id) {
        if finished {
            state.abandoned.remove(&call_id);
        }
        // One of ours that the user gave up.
        Destination::Discard
    } else {
        // Started elsewhere, detached, or forgotten: kept for receive.
        Destination::Backlog
    }
}

async fn hand_over(inner: &Inner, to: Destination, run: Vec<(u64, Option<u64>, CallEvent)>) {
    let (Some(first), Some(last)) = (run.first().map(|e| e.0), run.last().map(|e| e.0)) else {
        return;
    };
    match to {
        Destination::Discard => {}
        Destination::Backlog => {
            let mut state = inner.state();
            state.outstanding.insert(first, last);
            for (_, call_id, event) in &run {
                if let (Some(id), CallEvent::Finished(_)) = (call_id, event) {
                    state.foreign_pending.remove(id);
                }
            }
            let batch = Batch {
                first,
                events: run.into_iter().map(|(_, id, e)| (id, e)).collect(),
            };
            if state.backlog.send(batch).is_err() {
                state.outstanding.remove(&first);
            }
        }
        Destination::Call(call_id) => {
            let sender = {
                let mut state = inner.state();
                let sender = state.calls.get(&call_id).cloned();
                if sender.is_some() {
                    state.outstanding.insert(first, last);
                }
                sender
            };
            let Some(sender) = sender else { return };
            let batch = Batch {
                first,
                events: run.into_iter().map(|(_, _, e)| e).collect(),
            };
            // Waits while the caller is slower than the session: back-pressure reaches the host.
            if sender.send(batch).await.is_err() {
                inner.state().outstanding.remove(&first);
            }
        }
    }
}
