//! The consuming side: a [`Call`] (one invocation's events) and a [`Receive`] (the backlog of
//! invocations started elsewhere) share one [`Consumer`], which counts what the user has been
//! handed and acknowledges it [`ACK_LAG`] events later, or at once when the user waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{ACK_LAG, BacklogEvent, CallEvent, Inner, RELEASE_AFTER, State};
use crate::ClientError;

/// Events handed over together, with the sequence number of the first.
pub(super) struct Batch<T> {
    pub first: u64,
    pub events: Vec<T>,
    /// What the events weigh (counted for the backlog only).
    pub weight: usize,
}

/// Consumed batches waiting [`ACK_LAG`] more events before they are acknowledged.
#[derive(Default)]
struct Lag {
    consumed: u64,
    held: VecDeque<(u64, u64)>,
}

impl Lag {
    /// `first`'s batch is consumed; acknowledges the batches far enough behind (none while
    /// `defer`).
    fn batch_done(&mut self, session: &Inner, first: u64, defer: bool) {
        self.held.push_back((first, self.consumed));
        if defer {
            return;
        }
        while let Some(&(first, at)) = self.held.front() {
            if at + ACK_LAG > self.consumed {
                break;
            }
            self.held.pop_front();
            session.consumed(first);
        }
    }

    /// Every held batch (the consumer is done, gave up, or waits).
    fn release(&mut self, state: &mut State) {
        for (first, _) in self.held.drain(..) {
            state.release(first);
        }
    }
}

/// What a consumer took from its channel and has not handed to the user yet.
struct Consumer<T> {
    pending: VecDeque<T>,
    /// The batch `pending` comes from (its first sequence number).
    batch: Option<u64>,
    lag: Lag,
    session: Arc<Inner>,
    /// Nothing is acknowledged (but at the end): what was taken is held by the user, not
    /// handed on yet (see [`Call::defer_acks`]).
    defer: bool,
}

impl<T> Consumer<T> {
    fn new(session: Arc<Inner>) -> Self {
        Consumer {
            pending: VecDeque::new(),
            batch: None,
            lag: Lag::default(),
            session,
            defer: false,
        }
    }

    /// The next event already taken; when its batch is used up, that batch is consumed.
    fn next_taken(&mut self) -> Option<T> {
        if let Some(event) = self.pending.pop_front() {
            self.lag.consumed += 1;
            return Some(event);
        }
        if let Some(first) = self.batch.take() {
            self.lag.batch_done(&self.session, first, self.defer);
        }
        None
    }

    fn take(&mut self, batch: Batch<T>) {
        if batch.weight > 0 {
            let mut state = self.session.state();
            state.backlog_bytes = state.backlog_bytes.saturating_sub(batch.weight);
        }
        self.batch = Some(batch.first);
        self.pending.extend(batch.events);
    }

    /// The user waits for more: whatever they took has had time to reach the engine, and the
    /// host may be waiting for these acknowledgements to make room (output buffering `Block`).
    fn waiting(&mut self) {
        if self.lag.held.is_empty() || self.defer {
            return;
        }
        let mut state = self.session.state();
        self.lag.release(&mut state);
        self.session.acknowledge(&mut state);
    }

    /// Done: everything taken (and the batches `also`) counts as consumed, and is acknowledged.
    fn finish(&mut self, also: Vec<u64>) {
        let mut state = self.session.state();
        for first in self.batch.take().into_iter().chain(also) {
            state.release(first);
        }
        self.lag.release(&mut state);
        self.session.acknowledge(&mut state);
    }

    /// Lets go without acknowledging anything more (see [`Call::forget`]).
    fn forget(&mut self) {
        self.lag.held.clear();
        self.batch = None;
    }
}

/// One invocation's events, read with [`Call::next_event`] (blocking). Dropping an unfinished call
/// interrupts it on the host.
pub struct Call {
    id: u64,
    rx: mpsc::Receiver<Batch<CallEvent>>,
    consumer: Consumer<CallEvent>,
    finished: bool,
}

impl Call {
    pub(super) fn new(id: u64, rx: mpsc::Receiver<Batch<CallEvent>>, session: Arc<Inner>) -> Call {
        Call {
            id,
            rx,
            consumer: Consumer::new(session),
            finished: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn session(&self) -> &Arc<Inner> {
        &self.consumer.session
    }

    /// While `defer`, nothing taken is acknowledged (until it is turned off and more is
    /// taken, or the call ends): for a user that holds events before handing them on, so that
    /// what it held is not lost if it is killed.
    pub fn defer_acks(&mut self, defer: bool) {
        self.consumer.defer = defer;
    }

    /// The next event, waiting for it. An error means the connection was lost.
    pub fn next_event(&mut self) -> Result<CallEvent, ClientError> {
        loop {
            if let Some(event) = self.next_event_within(Duration::from_secs(3600))? {
                return Ok(event);
            }
        }
    }

    /// The next event if one comes within `wait`; `None` if none did.
    pub fn next_event_within(&mut self, wait: Duration) -> Result<Option<CallEvent>, ClientError> {
        // Read the clock only when there is a wait (a bulk stream mostly has its next event).
        let mut deadline = None;
        loop {
            if let Some(event) = self.consumer.next_taken() {
                if matches!(event, CallEvent::Finished(_)) {
                    self.finished = true;
                }
                return Ok(Some(event));
            }
            let next = match self.rx.try_recv() {
                Ok(batch) => Some(batch),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = tokio::time::Instant::now();
                    let deadline = *deadline.get_or_insert(now + wait);
                    let rx = &mut self.rx;
                    let release = (now + RELEASE_AFTER).min(deadline);
                    let waited = self
                        .consumer
                        .session
                        .runtime
                        .block_on(async { tokio::time::timeout_at(release, rx.recv()).await });
                    match waited {
                        Ok(next) => next,
                        Err(_) => {
                            self.consumer.waiting();
                            let rx = &mut self.rx;
                            let waited = self.consumer.session.runtime.block_on(async {
                                tokio::time::timeout_at(deadline, rx.recv()).await
                            });
                            match waited {
                                Ok(next) => next,
                                Err(_) => return Ok(None),
                            }
                        }
                    }
                }
            };
            match next {
                Some(batch) => self.consumer.take(batch),
                None => {
                    self.finished = true;
                    return Err(self.session().lost_error());
                }
            }
        }
    }

    /// Lets go of the invocation without stopping it, as if this client had vanished: it runs on
    /// in the session, and what this call did not hand on (including events held back for
    /// [`ACK_LAG`]) stays on the host for [`super::SessionHandle::receive`].
    pub fn forget(mut self) {
        self.finished = true;
        self.consumer.forget();
        let session = self.session().clone();
        let mut state = session.state();
        // Its output goes to the backlog from now on.
        state.calls.remove(&self.id);
        // Batches already handed to this call stay outstanding: never acknowledged here.
        self.rx.close();
        state.forgotten = true;
    }

    /// Asks the host to stop this invocation; its `Finished` event still follows (or, when
    /// the session does not stop within [`super::STOP_GRACE`], an `Interrupted` error).
    pub fn interrupt(&self) {
        self.session().interrupt_waited(self.id);
    }

    /// A handle that can interrupt this call from another thread (a signal handler).
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let session = self.session().clone();
        let id = self.id;
        move || session.interrupt_waited(id)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.session().interrupt(self.id);
            self.session().state().abandoned.insert(self.id);
        }
        if self.session().state().forgotten {
            // See `forget`: nothing more is acknowledged by this client.
            return;
        }
        // What this call still holds was given up by the user: it counts as consumed.
        self.session().state().calls.remove(&self.id);
        let mut rest = Vec::new();
        while let Ok(batch) = self.rx.try_recv() {
            rest.push(batch.first);
        }
        self.consumer.finish(rest);
    }
}

/// What [`Receive::next_event_within`] found.
pub enum Next<T> {
    Event(T),
    /// Everything is received.
    End,
    /// Nothing came within the wait.
    Waiting,
}

/// The backlog, read with [`Receive::next_event`]: output of invocations started elsewhere.
pub struct Receive {
    rx: Option<std::sync::mpsc::Receiver<Batch<BacklogEvent>>>,
    consumer: Consumer<BacklogEvent>,
    /// Every event up to this one existed when the client attached.
    until_seq: u64,
}

impl Receive {
    pub(super) fn new(
        rx: std::sync::mpsc::Receiver<Batch<BacklogEvent>>,
        session: Arc<Inner>,
        until_seq: u64,
    ) -> Receive {
        Receive {
            rx: Some(rx),
            consumer: Consumer::new(session),
            until_seq,
        }
    }

    /// See [`Call::defer_acks`].
    pub fn defer_acks(&mut self, defer: bool) {
        self.consumer.defer = defer;
    }

    /// Hands `events` (of no invocation) out before anything else.
    pub(super) fn show_first(&mut self, events: Vec<CallEvent>) {
        for event in events.into_iter().rev() {
            self.consumer.pending.push_front((None, event));
        }
    }

    /// The next event with its invocation id; `Ok(None)` when everything is received.
    pub fn next_event(&mut self) -> Result<Option<BacklogEvent>, ClientError> {
        loop {
            match self.next_event_within(Duration::from_secs(3600))? {
                Next::Event(event) => return Ok(Some(event)),
                Next::End => return Ok(None),
                Next::Waiting => {}
            }
        }
    }

    /// Like [`Receive::next_event`], waiting at most about `wait` (then [`Next::Waiting`]).
    pub fn next_event_within(&mut self, wait: Duration) -> Result<Next<BacklogEvent>, ClientError> {
        let mut deadline = None;
        loop {
            if let Some(event) = self.consumer.next_taken() {
                return Ok(Next::Event(event));
            }
            let session = self.consumer.session.clone();
            let Some(rx) = &self.rx else {
                return Ok(Next::End);
            };
            match rx.try_recv() {
                Ok(batch) => {
                    self.consumer.take(batch);
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(session.lost_error());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            // Batches are queued before `received` moves past them, and before the invocations
            // they end leave `foreign_pending` (under the same lock): once both say everything
            // is here, every batch is in the channel — including any queued since the look
            // above, so it looks once more before saying it is done.
            let done = {
                let state = session.state();
                state.foreign_pending.is_empty() && state.received >= self.until_seq
            };
            if done {
                match rx.try_recv() {
                    Ok(batch) => {
                        self.consumer.take(batch);
                        continue;
                    }
                    Err(_) => {
                        // Said before the end: events that were not kept here.
                        let withheld = std::mem::take(&mut session.state().withheld);
                        if withheld > 0 {
                            return Ok(Next::Event((None, CallEvent::Withheld(withheld))));
                        }
                        return Ok(Next::End);
                    }
                }
            }
            if !session.usable() {
                return Err(session.lost_error());
            }
            let deadline = *deadline.get_or_insert_with(|| std::time::Instant::now() + wait);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(batch) => self.consumer.take(batch),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.consumer.waiting();
                    if std::time::Instant::now() >= deadline {
                        return Ok(Next::Waiting);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(session.lost_error());
                }
            }
        }
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        // Unread events stay on the host (they are not acknowledged) for the next receive; what
        // was read is acknowledged.
        self.consumer.finish(Vec::new());
        if let Some(rx) = self.rx.take() {
            *self
                .consumer
                .session
                .backlog
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(rx);
        }
    }
}
