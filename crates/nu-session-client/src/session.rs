//! An attached session: [`SessionHandle`] sends invocations and interrupts; a reader task
//! receives the session's numbered output, hands each invocation's events to its [`Call`], and
//! acknowledges them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use nu_protocol::Value;
use nu_session_protocol::{
    Binding, ClientMessage, ErrorKind, Event, EventBody, HostMessage, Invocation, RemoteError,
    SessionInfo,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

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
}

/// Batches of events per channel message keep the hand-over between threads cheap.
const CALL_CHANNEL_BATCHES: usize = 16;

#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    outgoing: mpsc::UnboundedSender<ClientMessage>,
    calls: Mutex<Calls>,
    next_call: AtomicU64,
    alive: AtomicBool,
    /// The host said the session ended (its code called `exit`).
    ended: AtomicBool,
    info: SessionInfo,
}

#[derive(Default)]
struct Calls {
    senders: HashMap<u64, mpsc::Sender<Vec<CallEvent>>>,
    last_seq: u64,
}

impl Inner {
    fn calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SessionHandle {
    pub(crate) fn start(conn: Connection, info: SessionInfo, runtime: Handle) -> SessionHandle {
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<ClientMessage>();
        let inner = Arc::new(Inner {
            outgoing,
            calls: Mutex::new(Calls::default()),
            next_call: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            ended: AtomicBool::new(false),
            info,
        });
        let (mut sink, stream) = conn.split();
        runtime.spawn(async move {
            while let Some(message) = to_send.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        runtime.spawn(read_events(stream, inner.clone()));
        SessionHandle { inner }
    }

    /// The session as the host described it when this client attached.
    pub fn info(&self) -> &SessionInfo {
        &self.inner.info
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }

    /// Whether the host said the session ended; it no longer exists there.
    pub fn has_ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    /// The last event number processed (for resuming on another connection).
    pub fn last_seq(&self) -> u64 {
        self.inner.calls().last_seq
    }

    /// Starts running `source` in the session; its events arrive through the returned [`Call`].
    /// Invocations run one at a time, in the order sent.
    pub fn invoke(
        &self,
        source: String,
        bindings: Vec<Binding>,
        input: Option<Value>,
    ) -> Result<Call, ClientError> {
        if !self.is_alive() {
            return Err(ClientError::lost());
        }
        let call_id = self.inner.next_call.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(CALL_CHANNEL_BATCHES);
        self.inner.calls().senders.insert(call_id, tx);
        let invocation = Invocation {
            call_id,
            source,
            bindings,
            input,
        };
        if self
            .inner
            .outgoing
            .send(ClientMessage::Invoke(invocation))
            .is_err()
        {
            self.inner.calls().senders.remove(&call_id);
            return Err(ClientError::lost());
        }
        Ok(Call {
            id: call_id,
            rx,
            pending: VecDeque::new(),
            session: self.inner.clone(),
            finished: false,
        })
    }
}

/// One invocation's events, read with [`Call::next_event`] (blocking). Dropping an unfinished call
/// interrupts it on the host.
pub struct Call {
    id: u64,
    rx: mpsc::Receiver<Vec<CallEvent>>,
    pending: VecDeque<CallEvent>,
    session: Arc<Inner>,
    finished: bool,
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
                return Ok(event);
            }
            match self.rx.blocking_recv() {
                Some(batch) => self.pending.extend(batch),
                None => {
                    self.finished = true;
                    return Err(ClientError::lost());
                }
            }
        }
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
    let _ = session.outgoing.send(ClientMessage::Interrupt { call_id });
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            interrupt(&self.session, self.id);
        }
        self.session.calls().senders.remove(&self.id);
    }
}

async fn read_events(mut stream: SplitStream<Connection>, inner: Arc<Inner>) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            HostMessage::Events(events) => {
                let Some(last) = events.last().map(|e| e.seq) else {
                    continue;
                };
                deliver(&inner, events).await;
                inner.calls().last_seq = last;
                if inner
                    .outgoing
                    .send(ClientMessage::Ack { seq: last })
                    .is_err()
                {
                    break;
                }
            }
            // Errors about requests without an answer of their own (an invocation sent while
            // not attached) end the current calls: nothing more will come for them.
            HostMessage::Error(error) => {
                let senders: Vec<_> = inner.calls().senders.drain().collect();
                for (_, sender) in senders {
                    let _ = sender
                        .send(vec![CallEvent::Finished(Some(error.clone()))])
                        .await;
                }
            }
            _ => {}
        }
    }
    inner.alive.store(false, Ordering::SeqCst);
    // Dropping the senders tells every waiting call the connection is gone.
    inner.calls().senders.clear();
}

/// Hands events to their calls, grouped into one batch per run of the same call.
async fn deliver(inner: &Inner, events: Vec<Event>) {
    let mut batch: Vec<CallEvent> = Vec::new();
    let mut batch_call = None;
    for event in events {
        let (call_id, call_event) = match event.body {
            EventBody::Started { call_id, stream } => {
                (Some(call_id), CallEvent::Started { stream })
            }
            EventBody::Value { call_id, value } => (Some(call_id), CallEvent::Value(value)),
            // Output written while no invocation of ours ran has nobody to show it to.
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
        };
        if call_id != batch_call && !batch.is_empty() {
            send_batch(inner, batch_call, std::mem::take(&mut batch)).await;
        }
        batch_call = call_id;
        batch.push(call_event);
    }
    if !batch.is_empty() {
        send_batch(inner, batch_call, batch).await;
    }
}

async fn send_batch(inner: &Inner, call_id: Option<u64>, batch: Vec<CallEvent>) {
    let Some(call_id) = call_id else { return };
    let sender = inner.calls().senders.get(&call_id).cloned();
    if let Some(sender) = sender {
        // Waits while the caller is slower than the session: back-pressure reaches the host.
        let _ = sender.send(batch).await;
    }
}
