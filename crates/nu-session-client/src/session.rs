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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nu_protocol::Value;
use nu_session_protocol::{
    Attachment, Binding, ClientMessage, ErrorKind, Event, EventBody, HostMessage, Invocation,
    OutputBuffering, RemoteError, SessionInfo,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::ClientError;
use crate::transport::Connection;

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
    outgoing: mpsc::UnboundedSender<Outgoing>,
    state: Mutex<State>,
    /// Call ids of this handle start at a random base: ids from other clients (whose output
    /// may still be on the host) never collide with ours.
    first_call: u64,
    next_call: AtomicU64,
    alive: AtomicBool,
    /// The host said the session ended (its code called `exit`).
    ended: AtomicBool,
    attachment: Attachment,
    runtime: Handle,
    /// The backlog's receiving end, while no [`Receive`] holds it.
    backlog: Mutex<Option<std::sync::mpsc::Receiver<Batch<BacklogEvent>>>>,
}

struct State {
    calls: HashMap<u64, mpsc::Sender<Batch<CallEvent>>>,
    /// Invocations sent detached: their output goes to the backlog.
    detached: HashSet<u64>,
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

    fn is_ours(&self, call_id: u64) -> bool {
        call_id >= self.first_call && call_id < self.next_call.load(Ordering::SeqCst)
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
        conn: Connection,
        attachment: Attachment,
        resumed_from: u64,
        runtime: Handle,
    ) -> SessionHandle {
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Outgoing>();
        let (backlog_tx, backlog_rx) = std::sync::mpsc::channel();
        let first_call = (uuid::Uuid::new_v4().as_u128() as u64 >> 24) << 20 | 1;
        let inner = Arc::new(Inner {
            outgoing,
            state: Mutex::new(State {
                calls: HashMap::new(),
                detached: HashSet::new(),
                // Events up to the host's acknowledged mark are gone: nothing to wait for there.
                received: resumed_from.max(attachment.acked),
                acked: resumed_from.max(attachment.acked),
                outstanding: BTreeMap::new(),
                reply: None,
                dropped: 0,
                forgotten: false,
                foreign_pending: HashSet::new(),
                backlog: backlog_tx,
            }),
            first_call,
            next_call: AtomicU64::new(first_call),
            alive: AtomicBool::new(true),
            ended: AtomicBool::new(false),
            attachment,
            runtime: runtime.clone(),
            backlog: Mutex::new(Some(backlog_rx)),
        });
        {
            let mut state = inner.state();
            state.foreign_pending = inner
                .attachment
                .pending_calls
                .iter()
                .copied()
                .filter(|id| !inner.is_ours(*id))
                .collect();
        }
        let (mut sink, stream) = conn.split();
        runtime.spawn(async move {
            while let Some(Outgoing::Message(message)) = to_send.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        runtime.spawn(read_events(stream, inner.clone()));
        SessionHandle { inner }
    }

    /// The session as the host described it when this client attached.
    pub fn info(&self) -> &SessionInfo {
        &self.inner.attachment.info
    }

    /// What the host said when this client attached.
    pub fn attachment(&self) -> &Attachment {
        &self.inner.attachment
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }

    /// Whether the host said the session ended; it no longer exists there.
    pub fn has_ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    /// The last event number received (for resuming on another connection).
    pub fn last_seq(&self) -> u64 {
        self.inner.state().received
    }

    fn send(&self, message: ClientMessage) -> Result<(), ClientError> {
        if !self.is_alive() {
            return Err(ClientError::lost());
        }
        self.inner
            .outgoing
            .send(Outgoing::Message(message))
            .map_err(|_| ClientError::lost())
    }

    fn new_call_id(&self) -> u64 {
        self.inner.next_call.fetch_add(1, Ordering::SeqCst)
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
        if let Err(e) = self.send(ClientMessage::Invoke(invocation)) {
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
        self.inner.state().detached.insert(call_id);
        self.send(ClientMessage::Invoke(Invocation {
            call_id,
            source,
            bindings,
            input,
        }))?;
        Ok(call_id)
    }

    /// Detaches from the session, which keeps running on the host, with new settings when
    /// given. Output not consumed here stays on the host. The handle is dead afterwards.
    pub fn disconnect(
        &self,
        idle_timeout: Option<Duration>,
        output_buffering: Option<OutputBuffering>,
    ) -> Result<SessionInfo, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner.state().reply = Some(tx);
        self.send(ClientMessage::Disconnect {
            idle_timeout,
            output_buffering,
        })?;
        let reply = rx.blocking_recv().map_err(|_| ClientError::lost())?;
        match reply {
            HostMessage::Disconnected(info) => {
                self.inner.alive.store(false, Ordering::SeqCst);
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
        let attachment = &self.inner.attachment;
        Ok(Receive {
            session: self.inner.clone(),
            rx: Some(rx),
            pending: VecDeque::new(),
            batch: None,
            lag: Lag::default(),
            until_seq: attachment.next_seq.saturating_sub(1),
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
                    return Err(ClientError::lost());
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
        state.calls.remove(&self.id);
        state.detached.insert(self.id);
        // Batches already handed to this call stay outstanding: never acknowledged here.
        self.rx.close();
        state.forgotten = true;
    }

    /// Asks the host to stop this invocation; its `Finished` event still follows.
    pub fn interrupt(&self) {
        interrupt(&self.session, self.id);
    }

    /// A handle that can interrupt this call from another thread (a signal handler).
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let session = self.session.clone();
        let id = self.id;
        move || interrupt(&session, id)
    }
}

fn interrupt(session: &Inner, call_id: u64) {
    let _ = session
        .outgoing
        .send(Outgoing::Message(ClientMessage::Interrupt { call_id }));
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            interrupt(&self.session, self.id);
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
                    return Err(ClientError::lost());
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
            if !self.session.alive.load(Ordering::SeqCst) {
                return Err(ClientError::lost());
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
                    return Err(ClientError::lost());
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

async fn read_events(mut stream: futures::stream::SplitStream<Connection>, inner: Arc<Inner>) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            HostMessage::Events(events) => {
                let Some(last) = events.last().map(|e| e.seq) else {
                    continue;
                };
                deliver(&inner, events).await;
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
    inner.alive.store(false, Ordering::SeqCst);
    let mut state = inner.state();
    // Dropping the senders tells every waiting call the connection is gone.
    state.calls.clear();
    state.reply = None;
}

/// Hands events to their calls or the backlog, one batch per run of the same destination.
async fn deliver(inner: &Inner, events: Vec<Event>) {
    let mut run: Vec<(u64, Option<u64>, CallEvent)> = Vec::new();
    let mut run_to = Destination::Discard;
    for event in events {
        let (call_id, call_event) = split(inner, event.body);
        let to = destination(inner, call_id);
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

fn destination(inner: &Inner, call_id: Option<u64>) -> Destination {
    let Some(call_id) = call_id else {
        // Printed while no invocation ran (a background job): nobody to show it to.
        return Destination::Discard;
    };
    let state = inner.state();
    if state.calls.contains_key(&call_id) {
        Destination::Call(call_id)
    } else if state.detached.contains(&call_id) || !inner.is_ours(call_id) {
        Destination::Backlog
    } else {
        // One of ours that the user abandoned.
        Destination::Discard
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
