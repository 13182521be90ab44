//! A session's output, numbered and kept until its client has consumed it.
//!
//! Producers (the evaluation thread, the stdout/stderr forwarders) [`Outbox::push`] events; the
//! attached connection's writer takes what it may send ([`Outbox::next_batch`]) and the client
//! [`Outbox::ack`]s what its consumers consumed.
//!
//! Each invocation's output is a stream of its own (what the session printed while no invocation
//! ran is one more), with flow control as SSH channels and HTTP/2 streams have it: the writer
//! sends a stream's events only while what it has sent and not had acknowledged costs less than
//! the client's window (see [`EventBody::cost`]; one event always goes, whatever its size). So
//! output nobody reads waits here, never half here and half in the client, and one invocation's
//! unread output never holds back another's. Within a stream events go in order; across streams,
//! in order of their numbers as far as the windows allow.
//!
//! The buffer is bounded in bytes: in `Block` mode a producer waits while its invocation's
//! output holds the limit (or everything kept holds four times it: output of earlier invocations
//! nobody received); in `Drop` mode the oldest values and output make room and are counted.
//! An invocation's `Started` and `Finished` are never dropped and never wait.
//!
//! Each event is encoded once, by its producer and outside the lock, and kept as bytes: a batch
//! is those bytes laid end to end behind a `HostMessage::Events` header, and a replay after a
//! reconnect sends them again as they are.
//!
//! A stream's values join its newest event while it is a group that has not been sent (up to
//! [`GROUP_VALUES`] values or [`GROUP_BYTES`]): a producer faster than the connection (or than
//! its consumer) fills groups of thousands, which cost one event each on the wire and in the
//! client; a slow one's value goes alone, at once. A consumer that takes part of a group
//! acknowledges that part, and the group is cut to what is left.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nu_session_protocol::{
    Ack, EncodedEvent, EventBody, HostMessage, OutputBuffering, ProtocolError, Received,
    encode_frame, events_frame,
};

/// Most events and bytes sent in one frame.
const BATCH_EVENTS: usize = 4096;
const BATCH_BYTES: usize = 128 * 1024;

/// What a value in a group weighs beyond its encoding.
const VALUE_OVERHEAD: usize = 8;

/// Most values and bytes of values in one [`EventBody::Values`] event.
const GROUP_VALUES: usize = 4096;
const GROUP_BYTES: usize = 256 * 1024;

/// Kept output of all invocations together may reach this many times the limit in `Block` mode
/// (each invocation's own is bounded by the limit).
const ALL_STREAMS: usize = 4;

/// Whose output an event is: an invocation's, or (`None`) what the session printed while none
/// ran.
type StreamKey = Option<u64>;

pub struct Outbox {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// One event as it goes on the wire.
struct Kept {
    seq: u64,
    droppable: bool,
    /// Bytes it holds here (its encoding), for the buffer's bound.
    weight: usize,
    /// What it counts for in its stream's window.
    cost: usize,
    /// How many values it holds (a group's count, else 1): what dropping it drops.
    values: usize,
    /// Its invocation's `Finished`: the last of its stream.
    last: bool,
    encoded: Encoded,
}

enum Encoded {
    Done(EncodedEvent),
    /// Values of one invocation that more may join: their encodings end to end.
    Open {
        call_id: u64,
        bytes: Vec<u8>,
    },
    /// Dropped (output buffering `Drop`) after it was sent: the client has it, so its cost
    /// stays in the window until the client says it consumed it.
    Gone,
}

impl Kept {
    /// The event as it goes on the wire, closing an open group (nothing joins it after);
    /// `None` for one dropped after it was sent.
    fn close(&mut self) -> Option<&EncodedEvent> {
        if let Encoded::Open { call_id, bytes } = &self.encoded {
            let done = EncodedEvent::values(self.seq, *call_id, 0, self.values, bytes);
            self.encoded = Encoded::Done(done);
        }
        match &self.encoded {
            Encoded::Done(done) => Some(done),
            Encoded::Open { .. } | Encoded::Gone => None,
        }
    }
}

/// One stream's events and how far the attached connection has them.
#[derive(Default)]
struct Stream {
    events: VecDeque<Kept>,
    /// Bytes its events hold.
    bytes: usize,
    /// Its events up to this number have been sent to the attached client (or it had them).
    sent: u64,
    /// The cost of its events sent and not acknowledged.
    in_flight: usize,
}

impl Stream {
    /// The first event not sent yet, if the window lets it go.
    fn next_to_send(&self, window: usize) -> Option<usize> {
        let at = self.events.partition_point(|e| e.seq <= self.sent);
        let next = self.events.get(at)?;
        (self.in_flight == 0 || self.in_flight + next.cost <= window).then_some(at)
    }
}

/// The attached connection: the one the writer sends to.
#[derive(Clone, Copy)]
struct Attached {
    generation: u64,
    window: usize,
}

struct Inner {
    streams: BTreeMap<StreamKey, Stream>,
    next_seq: u64,
    /// Bytes all kept events hold.
    bytes: usize,
    limit: usize,
    mode: OutputBuffering,
    dropped: u64,
    /// Values and pieces of output dropped and not reported yet, per stream (kept when the
    /// stream itself is gone).
    unreported: BTreeMap<StreamKey, u64>,
    /// Windows of their own that consumers asked for their invocations (until the end of
    /// their output is acknowledged).
    windows: BTreeMap<u64, usize>,
    attached: Option<Attached>,
    generation: u64,
    /// Threads waiting on `changed`: waking nobody costs a system call per event, so only wake
    /// when someone waits.
    waiting: usize,
}

impl Inner {
    /// Forgets the first event of `key`'s stream.
    fn pop(&mut self, key: StreamKey) -> Option<Kept> {
        let stream = self.streams.get_mut(&key)?;
        let gone = stream.events.pop_front()?;
        if gone.last
            && let Some(id) = key
        {
            self.windows.remove(&id);
        }
        stream.bytes -= gone.weight;
        if gone.seq <= stream.sent {
            stream.in_flight -= gone.cost;
        }
        self.bytes -= gone.weight;
        Some(gone)
    }

    /// Forgets `key`'s stream when nothing is left in it.
    fn prune(&mut self, key: StreamKey) {
        if self.streams.get(&key).is_some_and(|s| s.events.is_empty()) {
            self.streams.remove(&key);
        }
    }

    /// Makes room in `Drop` mode: the oldest value or output of any stream goes. False when
    /// only starts and ends are left.
    fn drop_oldest(&mut self) -> bool {
        let oldest = self
            .streams
            .iter()
            .filter_map(|(key, s)| {
                let at = s.events.iter().position(|e| e.droppable)?;
                Some((s.events[at].seq, *key, at))
            })
            .min();
        let Some((_, key, at)) = oldest else {
            return false;
        };
        let stream = self.streams.get_mut(&key).expect("found above");
        let values = stream.events[at].values as u64;
        let weight = stream.events[at].weight;
        if stream.events[at].seq <= stream.sent {
            let event = &mut stream.events[at];
            event.encoded = Encoded::Gone;
            event.droppable = false;
            event.weight = 0;
        } else {
            stream.events.remove(at);
        }
        stream.bytes -= weight;
        *self.unreported.entry(key).or_default() += values;
        self.bytes -= weight;
        self.dropped += values;
        self.prune(key);
        true
    }

    /// Whether a new event of `weight` bytes for `key` must wait for room (`Block`).
    fn full(&self, key: StreamKey, weight: usize) -> bool {
        let own = self.streams.get(&key).map_or(0, |s| s.bytes);
        (own > 0 && own + weight > self.limit)
            || (self.bytes > 0 && self.bytes + weight > self.limit * ALL_STREAMS)
    }

    /// What the attached connection may send now: reports of drops, then events of the
    /// streams whose windows are open, oldest first; `None` when there is nothing.
    fn take_batch(&mut self, window: usize) -> Option<Batch> {
        let windows = &self.windows;
        let window_of = |key: StreamKey| {
            key.and_then(|id| windows.get(&id).copied())
                .unwrap_or(window)
        };
        let mut frames = Vec::new();
        for (call_id, count) in std::mem::take(&mut self.unreported) {
            if let Ok(frame) = encode_frame(&HostMessage::Dropped { call_id, count }) {
                frames.push(frame);
            }
        }
        let mut picked: Vec<(StreamKey, usize)> = Vec::new();
        let mut bytes = 0;
        // The next event of each stream whose window is open, by number.
        let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(u64, StreamKey, usize)>> =
            self.streams
                .iter()
                .filter_map(|(key, s)| {
                    let at = s.next_to_send(window_of(*key))?;
                    Some(std::cmp::Reverse((s.events[at].seq, *key, at)))
                })
                .collect();
        while let Some(std::cmp::Reverse((_, key, at))) = heads.pop() {
            if picked.len() >= BATCH_EVENTS {
                break;
            }
            let stream = self.streams.get_mut(&key).expect("a head of a stream");
            let event = &mut stream.events[at];
            let len = event.close().map_or(0, |done| done.as_bytes().len());
            if !picked.is_empty() && bytes + len > BATCH_BYTES {
                break;
            }
            bytes += len;
            stream.sent = event.seq;
            stream.in_flight += event.cost;
            picked.push((key, at));
            if let Some(next) = stream.next_to_send(window_of(key)) {
                heads.push(std::cmp::Reverse((stream.events[next].seq, key, next)));
            }
        }
        if !picked.is_empty() {
            let streams = &self.streams;
            let events =
                picked
                    .iter()
                    .filter_map(|(key, at)| match &streams[key].events[*at].encoded {
                        Encoded::Done(done) => Some(done),
                        Encoded::Open { .. } | Encoded::Gone => None,
                    });
            if let Ok(frame) = events_frame(picked.len(), bytes, events) {
                frames.push(frame);
            }
        }
        (!frames.is_empty()).then_some(Batch { frames })
    }
}

/// Whether output buffering `Drop` may discard the event: values, printed output and byte
/// stream pieces, never an invocation's `Started` or `Finished`.
fn droppable(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::Value { .. }
            | EventBody::Values { .. }
            | EventBody::Output { .. }
            | EventBody::Bytes { .. }
    )
}

/// What to send next: whole messages, framed (reports of dropped output, then a batch of
/// events).
pub struct Batch {
    pub frames: Vec<Vec<u8>>,
}

impl Outbox {
    pub fn new(limit: usize, mode: OutputBuffering) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                streams: BTreeMap::new(),
                next_seq: 1,
                bytes: 0,
                limit,
                mode,
                dropped: 0,
                unreported: BTreeMap::new(),
                windows: BTreeMap::new(),
                attached: None,
                generation: 0,
                waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the session, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event; in `Block` mode waits while the buffer is full. An event too large to
    /// send (over the message limit) is refused, and nothing is queued.
    pub fn push(&self, body: EventBody) -> Result<(), ProtocolError> {
        let key = body.call_id();
        let cost = body.cost();
        let mut weight = cost;
        // An invocation's start and end always go in at once, over the limit if need be (they
        // are small): they are pushed by threads that must not wait for room, such as a
        // connection's reader answering an interrupt while the acknowledgements that would
        // make room arrive on that same connection.
        let control = !droppable(&body);
        let last = matches!(body, EventBody::Finished { .. });
        // A stream's value is encoded alone, to join the open group of its invocation; it is
        // kept as its encoding, and weighs that (an int: a few bytes).
        let mut encoded = match &body {
            EventBody::Value { call_id, value } => {
                let bytes = nu_session_protocol::value::encode(value)?;
                weight = bytes.len() + VALUE_OVERHEAD;
                Encoded::Open {
                    call_id: *call_id,
                    bytes,
                }
            }
            _ => Encoded::Done(EncodedEvent::new(&body)?),
        };
        drop(body);
        let mut inner = self.lock();
        if !control {
            inner = self.make_room(inner, key, weight);
        }
        inner.bytes += weight;
        let seq = inner.next_seq;
        let stream = inner.streams.entry(key).or_default();
        stream.bytes += weight;
        // A value joins its stream's newest event when that is an open group (not sent).
        if let Encoded::Open { bytes, .. } = &encoded
            && let Some(tail) = stream.events.back_mut()
            && let Encoded::Open { bytes: group, .. } = &mut tail.encoded
            && tail.values < GROUP_VALUES
            && group.len() + bytes.len() <= GROUP_BYTES
        {
            group.extend_from_slice(bytes);
            tail.values += 1;
            tail.weight += weight;
            tail.cost += cost;
            self.notify(inner);
            return Ok(());
        }
        if let Encoded::Done(done) = &mut encoded {
            done.set_seq(seq);
        }
        stream.events.push_back(Kept {
            seq,
            droppable: !control,
            weight,
            cost,
            values: 1,
            last,
            encoded,
        });
        inner.next_seq += 1;
        self.notify(inner);
        Ok(())
    }

    /// Waits for room for an event of `weight` bytes of `key`'s (`Block`), or makes it by
    /// dropping the oldest values and output (`Drop`; only starts and ends left: they are
    /// small, the buffer may hold more than its limit for them).
    fn make_room<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        key: StreamKey,
        weight: usize,
    ) -> MutexGuard<'a, Inner> {
        loop {
            let mode = inner.mode;
            if mode == OutputBuffering::Block && inner.full(key, weight) {
                inner.waiting += 1;
                inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
                inner.waiting -= 1;
                continue;
            }
            let over = inner.bytes > 0 && inner.bytes + weight > inner.limit;
            if !(mode == OutputBuffering::Drop && over && inner.drop_oldest()) {
                return inner;
            }
        }
    }

    fn notify(&self, inner: MutexGuard<'_, Inner>) {
        let wake = inner.waiting > 0;
        drop(inner);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Forgets what a consumer consumed (see [`Ack`]): acknowledging again, or less, changes
    /// nothing.
    pub fn ack(&self, ack: Ack) {
        let Ack { call_id, seq, part } = ack;
        let mut inner = self.lock();
        while let Some(front) = inner.streams.get(&call_id).and_then(|s| s.events.front()) {
            let whole = front.seq < seq || (front.seq == seq && part.is_none());
            if whole {
                inner.pop(call_id);
                continue;
            }
            if let Some(part) = part
                && front.seq == seq
            {
                self.cut_group(&mut inner, call_id, part);
            }
            break;
        }
        inner.prune(call_id);
        self.notify(inner);
    }

    /// Cuts the first event of `key`'s stream (a group of values) to its values from the index
    /// `part` on; forgets it when none are left.
    fn cut_group(&self, inner: &mut Inner, key: StreamKey, part: u32) {
        let stream = inner.streams.get_mut(&key).expect("checked by the caller");
        let front = stream.events.front_mut().expect("checked by the caller");
        // Not a group, or dropped after it was sent: a part of it means nothing (a dropped
        // one stays in the window until it is acknowledged whole).
        let Some(Ok((rest, skipped, cut))) = front.close().map(|done| done.values_from(part))
        else {
            return;
        };
        if skipped == 0 {
            return;
        }
        let left = front.values.saturating_sub(skipped);
        if left == 0 {
            inner.pop(key);
            return;
        }
        let weight = rest.as_bytes().len() + left * VALUE_OVERHEAD;
        let freed = front.weight.saturating_sub(weight);
        front.values = left;
        front.weight -= freed;
        front.cost -= cut;
        front.encoded = Encoded::Done(rest);
        if front.seq <= stream.sent {
            stream.in_flight -= cut;
        }
        stream.bytes -= freed;
        inner.bytes -= freed;
    }

    /// From now on up to `window` of `call_id`'s output may be unacknowledged (its consumer
    /// holds a whole result before handing it on).
    pub fn set_window(&self, call_id: u64, window: usize) {
        let mut inner = self.lock();
        inner.windows.insert(call_id, window);
        // A client asking for many and never consuming them cannot grow this: the oldest go.
        while inner.windows.len() > 64 {
            inner.windows.pop_first();
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// A client attaches on a new connection (any attachment before it ends): it has what
    /// `resume` says, and takes `window` of each invocation's output at a time. Returns the
    /// attachment, for [`Outbox::next_batch`].
    pub fn attach(&self, resume: &[Received], window: usize) -> u64 {
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        inner.attached = Some(Attached { generation, window });
        for (key, stream) in inner.streams.iter_mut() {
            let had = key
                .and_then(|id| resume.iter().find(|r| r.call_id == id))
                .map_or(0, |r| r.seq);
            // What was dropped after it was sent and this client does not have is gone for it.
            stream
                .events
                .retain(|e| e.seq <= had || !matches!(e.encoded, Encoded::Gone));
            stream.sent = had;
            stream.in_flight = stream
                .events
                .iter()
                .take_while(|e| e.seq <= had)
                .map(|e| e.cost)
                .sum();
        }
        inner.prune_all();
        drop(inner);
        self.changed.notify_all();
        generation
    }

    /// The attached client is gone (its connection closed, or it disconnected): nothing more
    /// is sent to it.
    pub fn detach(&self) {
        self.lock().attached = None;
        self.changed.notify_all();
    }

    /// What the attachment `generation` may send next, waiting up to `wait` for it; `None` when
    /// nothing came, or the attachment ended.
    pub fn next_batch(&self, generation: u64, wait: Duration) -> Option<Batch> {
        let mut inner = self.lock();
        let mut waited = false;
        loop {
            let attached = inner.attached.filter(|a| a.generation == generation)?;
            if let Some(batch) = inner.take_batch(attached.window) {
                return Some(batch);
            }
            if waited {
                return None;
            }
            inner.waiting += 1;
            inner = self
                .changed
                .wait_timeout(inner, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            inner.waiting -= 1;
            waited = true;
        }
    }

    /// Waits up to `wait` until every event has been acknowledged.
    pub fn wait_acknowledged(&self, wait: Duration) {
        let mut inner = self.lock();
        inner.waiting += 1;
        let mut inner = self
            .changed
            .wait_timeout_while(inner, wait, |i| !i.streams.is_empty())
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        inner.waiting -= 1;
    }

    /// Wakes any [`Outbox::next_batch`] waiter (used when its connection goes away).
    pub fn wake(&self) {
        self.changed.notify_all();
    }

    /// How many values and pieces of output `Drop` mode has discarded.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The invocations whose output is kept, not all consumed yet, in order.
    pub fn kept(&self) -> Vec<u64> {
        self.lock().streams.keys().filter_map(|k| *k).collect()
    }

    /// Switches between `Block` and `Drop` (a paused producer re-checks at once).
    pub fn set_mode(&self, mode: OutputBuffering) {
        let mut inner = self.lock();
        inner.mode = mode;
        drop(inner);
        self.changed.notify_all();
    }
}

impl Inner {
    /// Forgets streams left empty (by an attachment that let go of dropped events).
    fn prune_all(&mut self) {
        self.streams.retain(|_, s| !s.events.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_session_protocol::Event;
    use std::collections::HashMap;
    use std::sync::Arc;

    const WIDE: usize = 1 << 40;

    fn output(call_id: Option<u64>, n: u8) -> EventBody {
        EventBody::Output {
            call_id,
            stderr: false,
            bytes: vec![n; 100],
        }
    }

    fn loose(n: u8) -> EventBody {
        output(None, n)
    }

    fn value(call_id: u64, n: i64) -> EventBody {
        EventBody::Value {
            call_id,
            value: nu_protocol::Value::test_int(n),
        }
    }

    fn ack(call_id: Option<u64>, seq: u64) -> Ack {
        Ack {
            call_id,
            seq,
            part: None,
        }
    }

    /// What a batch says, decoded as the client decodes it: the drops reported, the events.
    fn decode(batch: Option<Batch>) -> (Vec<(Option<u64>, u64)>, Vec<Event>) {
        let mut dropped = Vec::new();
        let mut events = Vec::new();
        for frame in batch.map(|b| b.frames).unwrap_or_default() {
            match nu_session_protocol::read_frame::<HostMessage>(&mut &frame[..]) {
                Ok(Some(HostMessage::Events(got))) => events.extend(got),
                Ok(Some(HostMessage::Dropped { call_id, count })) => dropped.push((call_id, count)),
                other => panic!("not a batch: {other:?}"),
            }
        }
        (dropped, events)
    }

    fn events(outbox: &Outbox, generation: u64) -> Vec<Event> {
        decode(outbox.next_batch(generation, Duration::ZERO)).1
    }

    fn seqs(outbox: &Outbox, generation: u64) -> Vec<u64> {
        events(outbox, generation).iter().map(|e| e.seq).collect()
    }

    /// The values of the events, in order, with the sequence number of the event each came in.
    fn values(events: &[Event]) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        for event in events {
            match &event.body {
                EventBody::Values { values, .. } => {
                    out.extend(values.iter().map(|v| (event.seq, v.as_int().unwrap())))
                }
                other => panic!("not values: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn events_stay_until_acknowledged_and_come_again_on_a_new_attachment() {
        let outbox = Outbox::new(1 << 20, OutputBuffering::Block);
        for n in 0..5 {
            outbox.push(output(Some(7), n)).unwrap();
        }
        let first = outbox.attach(&[], WIDE);
        assert_eq!(seqs(&outbox, first), [1, 2, 3, 4, 5]);
        assert!(
            outbox
                .next_batch(first, Duration::from_millis(10))
                .is_none()
        );
        outbox.ack(ack(Some(7), 2));
        // A client that had up to 4 reattaches: only 5 comes; a new one gets all that is kept.
        let again = outbox.attach(&[Received { call_id: 7, seq: 4 }], WIDE);
        assert!(
            outbox.next_batch(first, Duration::ZERO).is_none(),
            "the old one ended"
        );
        assert_eq!(seqs(&outbox, again), [5]);
        let fresh = outbox.attach(&[], WIDE);
        assert_eq!(seqs(&outbox, fresh), [3, 4, 5]);
        assert_eq!(outbox.kept(), [7]);
        outbox.ack(ack(Some(7), 5));
        assert!(outbox.kept().is_empty());
    }

    #[test]
    fn values_join_the_newest_group_of_their_stream_until_it_is_sent() {
        let outbox = Outbox::new(1 << 20, OutputBuffering::Block);
        for n in 1..=3 {
            outbox.push(value(7, n)).unwrap();
        }
        // Another invocation's value starts a group of its own.
        outbox.push(value(8, 10)).unwrap();
        outbox.push(value(7, 4)).unwrap();
        let generation = outbox.attach(&[], WIDE);
        let first = events(&outbox, generation);
        assert_eq!(values(&first), [(1, 1), (1, 2), (1, 3), (1, 4), (2, 10)]);
        // Sent: closed. What comes now is a new event.
        outbox.push(value(8, 11)).unwrap();
        assert_eq!(values(&events(&outbox, generation)), [(3, 11)]);
    }

    #[test]
    fn a_consumer_that_took_part_of_a_group_leaves_the_rest() {
        let outbox = Outbox::new(1 << 20, OutputBuffering::Block);
        for n in 0..10 {
            outbox.push(value(7, n)).unwrap();
        }
        let generation = outbox.attach(&[], WIDE);
        assert_eq!(values(&events(&outbox, generation)).len(), 10);
        // Three taken, then the consumer stopped: the rest is what the next one gets, its
        // values still counted from the group as made.
        outbox.ack(Ack {
            call_id: Some(7),
            seq: 1,
            part: Some(3),
        });
        let next = outbox.attach(&[], WIDE);
        let rest = events(&outbox, next);
        assert!(matches!(rest[0].body, EventBody::Values { first: 3, .. }));
        assert_eq!(values(&rest), (3..10).map(|n| (1, n)).collect::<Vec<_>>());
        // Acknowledged again, or less: nothing changes; then two more of it.
        outbox.ack(Ack {
            call_id: Some(7),
            seq: 1,
            part: Some(2),
        });
        outbox.ack(Ack {
            call_id: Some(7),
            seq: 1,
            part: Some(5),
        });
        let last = outbox.attach(&[], WIDE);
        assert_eq!(
            values(&events(&outbox, last)),
            (5..10).map(|n| (1, n)).collect::<Vec<_>>()
        );
        outbox.ack(Ack {
            call_id: Some(7),
            seq: 1,
            part: Some(10),
        });
        assert!(outbox.kept().is_empty());
        assert_eq!(outbox.lock().bytes, 0);
    }

    #[test]
    fn a_window_holds_back_one_invocation_and_not_the_others() {
        let outbox = Outbox::new(1 << 20, OutputBuffering::Block);
        let cost = output(Some(1), 0).cost();
        for n in 0..10 {
            outbox.push(output(Some(1), n)).unwrap();
        }
        for n in 0..3 {
            outbox.push(output(Some(2), n)).unwrap();
        }
        // Room for three of each invocation's output at a time.
        let generation = outbox.attach(&[], 3 * cost);
        let sent = events(&outbox, generation);
        let of = |events: &[Event], id| {
            events
                .iter()
                .filter(|e| e.body.call_id() == Some(id))
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(&sent, 1), [1, 2, 3]);
        assert_eq!(of(&sent, 2), [11, 12, 13], "held back behind the first");
        assert!(
            outbox
                .next_batch(generation, Duration::from_millis(10))
                .is_none()
        );
        // Two consumed: two more go.
        outbox.ack(ack(Some(1), 2));
        assert_eq!(seqs(&outbox, generation), [4, 5]);
        // One event always goes, whatever its size.
        let big = EventBody::Output {
            call_id: Some(3),
            stderr: false,
            bytes: vec![0; 10 * cost],
        };
        outbox.push(big).unwrap();
        assert_eq!(seqs(&outbox, generation), [14]);
    }

    #[test]
    fn dropping_a_group_counts_its_values_and_reports_them_for_their_invocation() {
        // Room for the ten values (9 bytes each) and one output (132), not two.
        let outbox = Outbox::new(270, OutputBuffering::Drop);
        for n in 0..10 {
            outbox.push(value(1, n)).unwrap();
        }
        // Sent, so the next values would make a new group; then output that needs the room.
        let generation = outbox.attach(&[], WIDE);
        assert_eq!(values(&events(&outbox, generation)).len(), 10);
        outbox.push(output(Some(1), 1)).unwrap();
        outbox.push(output(Some(1), 2)).unwrap();
        assert_eq!(outbox.dropped(), 10, "the group of 10 values went");
        let (dropped, events) = decode(outbox.next_batch(generation, Duration::ZERO));
        assert_eq!(dropped, [(Some(1), 10)]);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn block_mode_pauses_the_producer_until_acknowledged() {
        let outbox = Arc::new(Outbox::new(1000, OutputBuffering::Block));
        let producer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    outbox.push(output(Some(4), n)).unwrap();
                }
            })
        };
        let generation = outbox.attach(&[], WIDE);
        let mut received = Vec::new();
        while received.len() < 50 {
            let batch = outbox.next_batch(generation, Duration::from_secs(5));
            assert!(batch.is_some(), "producer stalled");
            let batch: Vec<u64> = decode(batch).1.iter().map(|e| e.seq).collect();
            // Never more than the limit allows is held at once.
            assert!(batch.len() <= 1000 / 132 + 1, "{}", batch.len());
            received.extend(batch);
            outbox.ack(ack(Some(4), *received.last().unwrap()));
        }
        producer.join().unwrap();
        assert_eq!(received, (1..=50).collect::<Vec<_>>());
        assert_eq!(outbox.dropped(), 0);
    }

    #[test]
    fn unread_output_of_one_invocation_does_not_block_the_next() {
        let outbox = Arc::new(Outbox::new(1000, OutputBuffering::Block));
        // An earlier invocation's output fills its part of the buffer; nobody reads it.
        while outbox.lock().bytes + 132 <= 1000 {
            outbox.push(output(Some(1), 0)).unwrap();
        }
        let next = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                for n in 0..5 {
                    outbox.push(output(Some(2), n)).unwrap();
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !next.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the next invocation waits"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn drop_mode_never_drops_the_start_or_end_of_an_invocation() {
        let outbox = Outbox::new(1000, OutputBuffering::Drop);
        outbox
            .push(EventBody::Started {
                call_id: 7,
                stream: true,
                bytes: None,
            })
            .unwrap();
        for n in 0..50 {
            outbox.push(output(Some(7), n)).unwrap();
        }
        outbox
            .push(EventBody::Finished {
                call_id: 7,
                error: None,
            })
            .unwrap();
        let kept = events(&outbox, outbox.attach(&[], WIDE));
        assert!(matches!(
            kept[0].body,
            EventBody::Started { call_id: 7, .. }
        ));
        assert!(matches!(
            kept.last().unwrap().body,
            EventBody::Finished { call_id: 7, .. }
        ));
        // Between them, the newest output, contiguous.
        let values: Vec<u64> = kept[1..kept.len() - 1].iter().map(|e| e.seq).collect();
        assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{values:?}");
        assert_eq!(*values.last().unwrap(), 51);
        assert_eq!(outbox.dropped(), 50 - values.len() as u64);
    }

    #[test]
    fn block_mode_never_makes_the_end_of_an_invocation_wait() {
        let outbox = Arc::new(Outbox::new(1000, OutputBuffering::Block));
        while outbox.lock().bytes + 132 <= 1000 {
            outbox.push(output(Some(9), 0)).unwrap();
        }
        // Full: more output would wait for acknowledgements; a `Finished` (an interrupted
        // queued call, pushed by the thread that reads those acknowledgements) goes in at once.
        let pushed = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                outbox.push(EventBody::Finished {
                    call_id: 9,
                    error: None,
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pushed.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "Finished waits for room"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let batch = events(&outbox, outbox.attach(&[], WIDE));
        assert!(matches!(
            batch.last().unwrap().body,
            EventBody::Finished { call_id: 9, .. }
        ));
    }

    #[test]
    fn an_acknowledgement_frees_its_own_invocation_only() {
        let outbox = Outbox::new(1 << 20, OutputBuffering::Block);
        for n in 0..3 {
            outbox.push(output(Some(1), n)).unwrap();
            outbox.push(loose(n)).unwrap();
        }
        outbox.ack(ack(Some(1), 5));
        // Room was made: the bytes of the forgotten events are free again.
        assert_eq!(outbox.lock().bytes, 3 * loose(0).cost());
        assert_eq!(seqs(&outbox, outbox.attach(&[], WIDE)), [2, 4, 6]);
    }

    /// A small deterministic generator (xorshift), so a failing case can be run again by seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// One kept event as the model sees it.
    #[derive(Clone, Copy, Debug)]
    struct Modelled {
        seq: u64,
        key: StreamKey,
        control: bool,
        cost: usize,
    }

    /// Random pushes to several invocations, acknowledgements, batches and reattachments in both
    /// modes, checked against a model of what must be kept and a client's view: acknowledged
    /// events never come back; within an attachment nothing comes twice and each invocation's
    /// events come in order; no invocation has more than its window unacknowledged (but for one
    /// event); starts and ends are never dropped; drops are counted and reported for the right
    /// invocation; and at the end a new client gets exactly what is kept.
    #[test]
    fn property_outbox_matches_its_model_under_random_use() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let limit = 300 + rng.below(2000) as usize;
            let window = 100 + rng.below(1000) as usize;
            let mode = if rng.below(2) == 0 {
                OutputBuffering::Drop
            } else {
                OutputBuffering::Block
            };
            let outbox = Outbox::new(limit, mode);
            let keys = [None, Some(1), Some(2), Some(3)];
            let mut model: Vec<Modelled> = Vec::new();
            let mut next_seq = 1u64;
            let (mut dropped, mut reported) = (0u64, 0u64);
            // The client: what it received and has not acknowledged, per invocation.
            let mut generation = outbox.attach(&[], window);
            let mut holding: HashMap<StreamKey, Vec<(u64, usize)>> = HashMap::new();
            let mut newest: HashMap<StreamKey, u64> = HashMap::new();
            for step in 0..500 {
                let at = format!("seed {seed}, step {step}");
                match rng.below(12) {
                    0..=5 => {
                        let key = keys[rng.below(4) as usize];
                        let body = match (key, rng.below(4)) {
                            (Some(call_id), 0) => EventBody::Started {
                                call_id,
                                stream: true,
                                bytes: None,
                            },
                            (Some(call_id), 1) => EventBody::Finished {
                                call_id,
                                error: None,
                            },
                            _ => EventBody::Output {
                                call_id: key,
                                stderr: false,
                                bytes: vec![0; rng.below(150) as usize],
                            },
                        };
                        let control =
                            matches!(body, EventBody::Started { .. } | EventBody::Finished { .. });
                        let cost = body.cost();
                        let held = |m: &[Modelled], key: Option<StreamKey>| {
                            m.iter()
                                .filter(|e| key.is_none_or(|k| e.key == k))
                                .map(|e| e.cost)
                                .sum::<usize>()
                        };
                        if mode == OutputBuffering::Block && !control {
                            let own = held(&model, Some(key));
                            let all = held(&model, None);
                            let full = (own > 0 && own + cost > limit)
                                || (all > 0 && all + cost > limit * ALL_STREAMS);
                            if full {
                                // It would wait for room: make it, as a consumer would.
                                for key in keys {
                                    if let Some(last) =
                                        model.iter().filter(|e| e.key == key).map(|e| e.seq).max()
                                    {
                                        outbox.ack(ack(key, last));
                                    }
                                    holding.remove(&key);
                                }
                                model.clear();
                            }
                        }
                        if mode == OutputBuffering::Drop && !control {
                            while held(&model, None) > 0 && held(&model, None) + cost > limit {
                                let Some(oldest) = model.iter().position(|e| !e.control) else {
                                    break;
                                };
                                // A client that has it still holds it, until it consumes it.
                                model.remove(oldest);
                                dropped += 1;
                            }
                        }
                        outbox.push(body).unwrap();
                        model.push(Modelled {
                            seq: next_seq,
                            key,
                            control,
                            cost,
                        });
                        next_seq += 1;
                    }
                    6..=8 => {
                        let (drops, got) = decode(outbox.next_batch(generation, Duration::ZERO));
                        for (key, count) in drops {
                            assert!(keys.contains(&key), "{at}");
                            reported += count;
                        }
                        for event in got {
                            let key = event.body.call_id();
                            let kept = model.iter().find(|e| e.seq == event.seq);
                            let kept = kept.unwrap_or_else(|| {
                                panic!("{at}: {} was acknowledged or dropped", event.seq)
                            });
                            assert_eq!(kept.key, key, "{at}");
                            let last = newest.entry(key).or_default();
                            assert!(
                                event.seq > *last,
                                "{at}: {} again or out of order",
                                event.seq
                            );
                            *last = event.seq;
                            let held = holding.entry(key).or_default();
                            let in_flight: usize = held.iter().map(|h| h.1).sum();
                            assert!(
                                held.is_empty() || in_flight + kept.cost <= window,
                                "{at}: past the window"
                            );
                            held.push((event.seq, kept.cost));
                        }
                    }
                    9 | 10 => {
                        // The consumer of one invocation consumed some of what it holds.
                        let key = keys[rng.below(4) as usize];
                        let held = holding.entry(key).or_default();
                        if !held.is_empty() {
                            let upto = held[rng.below(held.len() as u64) as usize].0;
                            outbox.ack(ack(key, upto));
                            held.retain(|h| h.0 > upto);
                            model.retain(|e| e.key != key || e.seq > upto);
                        }
                    }
                    _ => {
                        if rng.below(2) == 0 {
                            // The same client on a new connection: it keeps what it holds.
                            let resume: Vec<Received> = newest
                                .iter()
                                .filter_map(|(key, seq)| {
                                    key.map(|call_id| Received { call_id, seq: *seq })
                                })
                                .collect();
                            generation = outbox.attach(&resume, window);
                            // Printed output is never resumed: it comes again.
                            holding.remove(&None);
                            newest.remove(&None);
                        } else {
                            // Another client: it has nothing.
                            generation = outbox.attach(&[], window);
                            holding.clear();
                            newest.clear();
                        }
                    }
                }
            }
            let last = outbox.attach(&[], WIDE);
            let (drops, kept) = decode(outbox.next_batch(last, Duration::ZERO));
            reported += drops.iter().map(|d| d.1).sum::<u64>();
            let mut kept: Vec<u64> = kept.iter().map(|e| e.seq).collect();
            kept.sort();
            assert_eq!(
                kept,
                model.iter().map(|e| e.seq).collect::<Vec<_>>(),
                "seed {seed}"
            );
            assert_eq!(outbox.dropped(), dropped, "seed {seed}");
            assert_eq!(reported, dropped, "seed {seed}");
        }
    }
}
