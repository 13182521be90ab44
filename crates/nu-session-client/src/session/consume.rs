//! The consuming side: a [`Call`] (one invocation's output) and a [`Receive`] (the backlog's)
//! take items from the ledger, waiting for them, and say what they handed on with the items'
//! tickets: [`ACK_LAG`] items later, at once when they wait, or (while deferred) not until
//! they are done.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ledger::Ticket;
use super::{
    ACK_LAG, BYTES_LAG, BacklogEvent, CallEvent, Inner, Link, RELEASE_AFTER, State, ended_error,
};
use crate::ClientError;

/// What a call took and has not said it handed on: the tickets of the values and byte pieces
/// among it, so that what was taken is consumed [`ACK_LAG`] values (or [`BYTES_LAG`] bytes)
/// later.
#[derive(Default)]
struct Taken {
    /// Tickets of the values and pieces taken and not consumed, oldest first, with their bytes.
    lagging: VecDeque<(Ticket, usize)>,
    /// Bytes among them.
    bytes: usize,
    /// The newest ticket taken (values or not), for consuming all of it.
    newest: Option<Ticket>,
    /// Nothing is consumed (but at the end): what was taken is held by the user, not handed on
    /// yet (see [`Call::defer_acks`]).
    defer: bool,
}

impl Taken {
    fn took(&mut self, event: &CallEvent, ticket: Ticket, state: &mut State) {
        self.newest = Some(ticket);
        match event {
            CallEvent::Value(_) => self.lagging.push_back((ticket, 0)),
            CallEvent::Bytes(bytes) => {
                self.lagging.push_back((ticket, bytes.len()));
                self.bytes += bytes.len();
            }
            _ => {}
        }
        while !self.defer && (self.lagging.len() > ACK_LAG || self.bytes > BYTES_LAG) {
            if let Some((old, bytes)) = self.lagging.pop_front() {
                self.bytes -= bytes;
                state.ledger.confirm(old);
            }
        }
    }

    /// Everything taken is consumed.
    fn all(&mut self, state: &mut State) {
        self.lagging.clear();
        self.bytes = 0;
        if let Some(ticket) = self.newest {
            state.ledger.confirm(ticket);
        }
    }
}

/// One invocation's events, read with [`Call::next_event`] (blocking). Dropping an unfinished call
/// interrupts it on the host and discards the rest of its output.
pub struct Call {
    id: u64,
    session: Arc<Inner>,
    taken: Taken,
    /// Loose output to show before the call's own (printed by a background job meanwhile).
    first: VecDeque<CallEvent>,
    finished: bool,
    /// Let go of without consuming more (see [`Call::forget`]).
    forgotten: bool,
}

impl Call {
    pub(super) fn new(id: u64, session: Arc<Inner>) -> Call {
        let first = session.state().ledger.take_loose().into();
        Call {
            id,
            session,
            taken: Taken::default(),
            first,
            finished: false,
            forgotten: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// While `defer`, nothing taken is consumed (until it is turned off and more is taken, or
    /// the call ends): for a user that holds events before handing them on, so that what it
    /// held is not lost if it is killed. Meanwhile the call's window is [`super::HELD_WINDOW`].
    pub fn defer_acks(&mut self, defer: bool) {
        self.taken.defer = defer;
        let mut state = self.session.state();
        let window = defer.then_some(super::HELD_WINDOW);
        state.ledger.set_window(self.id, window);
        self.session.settle(state);
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
        if let Some(event) = self.first.pop_front() {
            return Ok(Some(event));
        }
        if self.finished {
            return Err(self.session.lost_error());
        }
        let session = self.session.clone();
        let mut state = session.state();
        let mut waiting = Waiting::new(wait);
        loop {
            if let Some(error) = state.failed.remove(&self.id) {
                state.ledger.discard(self.id);
                session.settle(state);
                self.finished = true;
                return Ok(Some(CallEvent::Finished(Some(error))));
            }
            if let Some((event, ticket)) = state.ledger.take(self.id) {
                self.taken.took(&event, ticket, &mut state);
                if matches!(event, CallEvent::Finished(_)) {
                    self.finished = true;
                    self.taken.all(&mut state);
                }
                session.settle(state);
                return Ok(Some(event));
            }
            match session.link() {
                Link::Ended(reason) => {
                    self.finished = true;
                    return Ok(Some(CallEvent::Finished(Some(ended_error(&reason)))));
                }
                Link::Down(_) | Link::Detached => {
                    self.finished = true;
                    return Err(session.lost_error());
                }
                Link::Up | Link::Reconnecting => {}
            }
            match waiting.wait(&session, state, Some(&mut self.taken), self.id) {
                Some(next) => state = next,
                None => return Ok(None),
            }
        }
    }

    /// Lets go of the invocation without stopping it, as if this client had vanished: it runs on
    /// in the session, and what this call did not hand on stays on the host for
    /// [`super::SessionHandle::receive`].
    pub fn forget(mut self) {
        self.finished = true;
        self.forgotten = true;
        // This client is going away: nothing more is acknowledged.
        self.session.state().ledger.freeze();
    }

    /// Asks the host to stop this invocation; its `Finished` event still follows (or, when
    /// the session does not stop within [`super::STOP_GRACE`], an `Interrupted` error).
    pub fn interrupt(&self) {
        self.session.interrupt_waited(self.id);
    }

    /// A handle that can interrupt this call from another thread (a signal handler).
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let session = self.session.clone();
        let id = self.id;
        move || session.interrupt_waited(id)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.forgotten {
            return;
        }
        if !self.finished {
            self.session.interrupt(self.id);
        }
        // What this call still holds, or will get, was given up by the user: consumed.
        let mut state = self.session.state();
        state.failed.remove(&self.id);
        state.ledger.discard(self.id);
        self.session.settle(state);
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

/// The backlog, read with [`Receive::next_event`]: output of invocations started elsewhere, one
/// invocation after the other, until every one known has finished.
///
/// What a receive takes is consumed as it is taken, unless its user follows what is done with
/// each value ([`Receive::follow`]): then a value is consumed only when that user says it was
/// taken ([`Handover::taken`]), and when it stops early ([`Handover::stopped`]) the rest is
/// given back, for the next receive.
pub struct Receive {
    session: Arc<Inner>,
    handover: Handover,
    /// The newest item taken.
    last: Option<Ticket>,
    /// Printed while no invocation ran: shown first.
    first: VecDeque<CallEvent>,
}

impl Receive {
    pub(super) fn new(session: Arc<Inner>, loose: Vec<CallEvent>) -> Receive {
        Receive {
            handover: Handover(Arc::new(Handed {
                session: session.clone(),
                state: Mutex::new(HandedState::default()),
            })),
            session,
            last: None,
            first: loose.into(),
        }
    }

    /// From now on, a value is consumed only when the returned handle says the user took it:
    /// for a user that hands values on to someone who may stop reading (`nu`, `| first 3`).
    /// Tell it of each value handed on with [`Receive::handed_out`].
    pub fn follow(&mut self) -> Handover {
        self.handover.lock().followed = true;
        self.handover.clone()
    }

    /// What was taken so far makes the value just handed on (see [`Receive::follow`]).
    pub fn handed_out(&mut self) {
        if let Some(last) = self.last {
            let mut handed = self.handover.lock();
            if handed.followed {
                handed.pending.push_back(last);
            }
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
        if let Some(event) = self.first.pop_front() {
            return Ok(Next::Event((None, event)));
        }
        let session = self.session.clone();
        let mut state = session.state();
        let mut waiting = Waiting::new(wait);
        let followed = self.handover.lock().followed;
        loop {
            // One invocation after the other, in order.
            let Some(call_id) = state.ledger.backlog().first().copied() else {
                drop(state);
                self.handover.ended();
                return Ok(Next::End);
            };
            if let Some((event, ticket)) = state.ledger.take(call_id) {
                self.last = Some(ticket);
                self.handover.lock().took(ticket);
                if !followed {
                    state.ledger.confirm(ticket);
                }
                session.settle(state);
                return Ok(Next::Event((Some(call_id), event)));
            }
            if !session.usable() {
                return Err(session.lost_error());
            }
            match waiting.wait(&session, state, None, call_id) {
                Some(next) => state = next,
                None => return Ok(Next::Waiting),
            }
        }
    }
}

impl Drop for Receive {
    fn drop(&mut self) {
        // Taken as it was taken: done. Followed: done when its follower says so, or lets go.
        if !self.handover.lock().followed {
            self.handover.resolve(true);
        }
    }
}

/// Says, from another thread, which values a followed [`Receive`] handed on were taken.
#[derive(Clone)]
pub struct Handover(Arc<Handed>);

struct Handed {
    session: Arc<Inner>,
    state: Mutex<HandedState>,
}

#[derive(Default)]
struct HandedState {
    followed: bool,
    /// Per value handed on and not taken yet: the newest item it needed.
    pending: VecDeque<Ticket>,
    /// The newest item taken of each stream.
    newest: Vec<Ticket>,
    /// The receive reached its end: nothing more is handed on.
    ended: bool,
    /// Consumed, or given back: the session may receive again.
    resolved: bool,
}

impl HandedState {
    fn took(&mut self, ticket: Ticket) {
        match self.newest.iter_mut().find(|t| t.call_id == ticket.call_id) {
            Some(newest) => *newest = ticket,
            None => self.newest.push(ticket),
        }
    }
}

impl Handover {
    fn lock(&self) -> MutexGuard<'_, HandedState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `other` follows the same receive.
    pub fn same(&self, other: &Handover) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The oldest `count` values handed on and not taken were taken: they and what came before
    /// them are consumed.
    pub fn taken(&self, count: usize) {
        let (ticket, done) = {
            let mut handed = self.lock();
            let count = count.min(handed.pending.len());
            let ticket = handed.pending.drain(..count).next_back();
            (ticket, handed.ended && handed.pending.is_empty())
        };
        if let Some(ticket) = ticket {
            let mut state = self.0.session.state();
            state.ledger.confirm(ticket);
            self.0.session.settle(state);
        }
        if done {
            self.resolve(true);
        }
    }

    /// Whoever read the values stopped: what was handed on and not taken goes back, for the
    /// next receive.
    pub fn stopped(&self) {
        self.resolve(false);
    }

    /// The receive reached its end: when everything handed on was taken, it is done.
    fn ended(&self) {
        let done = {
            let mut handed = self.lock();
            handed.ended = true;
            handed.pending.is_empty()
        };
        if done {
            self.resolve(true);
        }
    }

    fn resolve(&self, all: bool) {
        self.0.resolve(all);
    }
}

impl Handed {
    /// Done: everything taken is consumed (`all`), or only what was said to be; the rest is
    /// given back; what was consumed is acknowledged; the session may receive again.
    fn resolve(&self, all: bool) {
        let newest = {
            let mut handed = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if std::mem::replace(&mut handed.resolved, true) {
                return;
            }
            handed.pending.clear();
            std::mem::take(&mut handed.newest)
        };
        let mut state = self.session.state();
        for ticket in &newest {
            if all {
                state.ledger.confirm(*ticket);
            }
            state.ledger.flush(ticket.call_id);
        }
        for call_id in state
            .ledger
            .backlog_taken()
            .into_iter()
            .chain(state.ledger.backlog())
        {
            state.ledger.untake(call_id);
        }
        state.receiving = false;
        self.session.settle(state);
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        // Let go of without a word (its follower is gone): what was not said to be taken goes
        // back.
        self.resolve(false);
    }
}

/// A consumer's wait for the next item: up to its deadline; once it has waited
/// [`RELEASE_AFTER`], what it took has had time to reach the engine and is consumed, and the
/// host, which may be waiting for room, hears of it.
struct Waiting {
    wait: Duration,
    /// Since when, and until when (the clock is read only once there is a wait: a bulk stream
    /// mostly has its next item).
    since: Option<(Instant, Instant)>,
    released: bool,
}

impl Waiting {
    fn new(wait: Duration) -> Waiting {
        Waiting {
            wait,
            since: None,
            released: false,
        }
    }

    /// Waits for output, the state unlocked meanwhile; `None` when the deadline has passed.
    fn wait<'a>(
        &mut self,
        session: &'a Inner,
        mut state: std::sync::MutexGuard<'a, State>,
        taken: Option<&mut Taken>,
        call_id: u64,
    ) -> Option<std::sync::MutexGuard<'a, State>> {
        let now = Instant::now();
        let (since, deadline) = *self.since.get_or_insert((now, now + self.wait));
        if now >= deadline {
            return None;
        }
        if !self.released && now >= since + RELEASE_AFTER {
            self.released = true;
            if let Some(taken) = taken.filter(|t| !t.defer) {
                taken.all(&mut state);
            }
            state.ledger.flush(call_id);
            state.send(&session.outgoing);
            // What was consumed may have ended a stream: look again before waiting.
            return Some(state);
        }
        let until = if self.released {
            deadline
        } else {
            (since + RELEASE_AFTER).min(deadline)
        };
        state.waiting += 1;
        let mut state = session
            .arrived
            .wait_timeout(state, until - now)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        state.waiting -= 1;
        Some(state)
    }
}
