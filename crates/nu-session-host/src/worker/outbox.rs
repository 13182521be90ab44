//! A session's output, numbered and kept until its client acknowledges it.
//!
//! Producers (the evaluation thread, the stdout/stderr forwarders) [`Outbox::push`] events; the
//! attached connection's writer takes the events after the last one it sent
//! ([`Outbox::next_batch`]) and the client [`Outbox::ack`]s what it has processed. The buffer is
//! bounded in bytes: in `Block` mode a full buffer pauses the producer (nothing is lost); in `Drop`
//! mode the oldest unacknowledged events make room and are counted.
//!
//! Each event is encoded once, by its producer and outside the lock, and kept as bytes: a batch
//! is those bytes laid end to end behind a `HostMessage::Events` header, and a replay after a
//! reconnect sends them again as they are. Events are kept in sequence order, so finding where
//! a batch starts is a binary search.
//!
//! A stream's values join the newest event while it is a group of the same invocation that no
//! connection has taken yet (up to [`GROUP_VALUES`] values or [`GROUP_BYTES`]): a producer
//! faster than the connection fills groups of thousands, which cost one event each on the
//! wire and in the client; a slow one's value is taken alone, at once. Taking a group for a
//! batch closes it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nu_session_protocol::{EncodedEvent, EventBody, OutputBuffering, ProtocolError, events_frame};

/// Most events and bytes sent in one frame.
const BATCH_EVENTS: usize = 4096;
const BATCH_BYTES: usize = 128 * 1024;

pub struct Outbox {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// What a value in a group weighs beyond its encoding.
const VALUE_OVERHEAD: usize = 8;

/// Most values and bytes of values in one [`EventBody::Values`] event.
const GROUP_VALUES: usize = 4096;
const GROUP_BYTES: usize = 256 * 1024;

/// One event as it goes on the wire.
struct Kept {
    seq: u64,
    droppable: bool,
    weight: usize,
    /// How many values it holds (a group's count, else 1): what dropping it drops.
    values: usize,
    /// The event encoded; for a group still open (not sent yet), `Encoded::Open`.
    encoded: Encoded,
}

enum Encoded {
    Done(EncodedEvent),
    /// Values of one invocation that more may join: their encodings end to end.
    Open {
        call_id: u64,
        bytes: Vec<u8>,
    },
}

impl Kept {
    /// The event as it goes on the wire, closing an open group (nothing joins it after).
    fn close(&mut self) -> &EncodedEvent {
        if let Encoded::Open { call_id, bytes } = &self.encoded {
            let done = EncodedEvent::values(self.seq, *call_id, self.values, bytes);
            self.encoded = Encoded::Done(done);
        }
        match &self.encoded {
            Encoded::Done(done) => done,
            Encoded::Open { .. } => unreachable!("closed above"),
        }
    }

    fn len(&mut self) -> usize {
        self.close().as_bytes().len()
    }
}

struct Inner {
    events: VecDeque<Kept>,
    next_seq: u64,
    bytes: usize,
    limit: usize,
    mode: OutputBuffering,
    dropped: u64,
    /// Dropped and not reported to a client yet.
    unreported: u64,
    /// Threads waiting on `changed`: waking nobody costs a system call per event, so only wake
    /// when someone waits.
    waiting: usize,
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

/// A batch of events ready to send: `frame` is a whole `HostMessage::Events` message, framed.
pub struct Batch {
    /// The newest event in it.
    pub last: u64,
    pub frame: Vec<u8>,
}

impl Outbox {
    pub fn new(limit: usize, mode: OutputBuffering) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
                bytes: 0,
                limit,
                mode,
                dropped: 0,
                unreported: 0,
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
        let mut weight = body.weight();
        // An invocation's start and end always go in at once, over the limit if need be (they
        // are small): they are pushed by threads that must not wait for room, such as a
        // connection's reader answering an interrupt while the acknowledgements that would
        // make room arrive on that same connection.
        let control = !droppable(&body);
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
        loop {
            let fits = control || inner.events.is_empty() || inner.bytes + weight <= inner.limit;
            if fits {
                break;
            }
            match inner.mode {
                OutputBuffering::Block => {
                    inner.waiting += 1;
                    inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
                    inner.waiting -= 1;
                }
                OutputBuffering::Drop => {
                    // The oldest value or output goes; an invocation's start and end never do
                    // (without them a call or a receive would wait forever). Only those left:
                    // they are small, the buffer may hold more than its limit for them.
                    let Some(oldest) = inner.events.iter().position(|e| e.droppable) else {
                        break;
                    };
                    if let Some(gone) = inner.events.remove(oldest) {
                        inner.bytes -= gone.weight;
                        inner.dropped += gone.values as u64;
                        inner.unreported += gone.values as u64;
                    }
                }
            }
        }
        inner.bytes += weight;
        // A value joins the newest event when it is an open group of the same invocation.
        if let Encoded::Open { call_id, bytes } = &encoded
            && let Some(tail) = inner.events.back_mut()
            && let Encoded::Open {
                call_id: open,
                bytes: group,
            } = &mut tail.encoded
            && open == call_id
            && tail.values < GROUP_VALUES
            && group.len() + bytes.len() <= GROUP_BYTES
        {
            group.extend_from_slice(bytes);
            tail.values += 1;
            tail.weight += weight;
            self.notify(inner);
            return Ok(());
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Encoded::Done(done) = &mut encoded {
            done.set_seq(seq);
        }
        inner.events.push_back(Kept {
            seq,
            droppable: !control,
            weight,
            values: 1,
            encoded,
        });
        self.notify(inner);
        Ok(())
    }

    fn notify(&self, inner: MutexGuard<'_, Inner>) {
        let wake = inner.waiting > 0;
        drop(inner);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Forgets every event up to and including `seq`.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        while inner.events.front().is_some_and(|e| e.seq <= seq) {
            if let Some(gone) = inner.events.pop_front() {
                inner.bytes -= gone.weight;
            }
        }
        self.notify(inner);
    }

    /// Forgets the events `first..=last` (older ones stay: they are another invocation's, not
    /// received yet).
    pub fn ack_range(&self, first: u64, last: u64) {
        let mut inner = self.lock();
        let from = inner.events.partition_point(|e| e.seq < first);
        let to = inner.events.partition_point(|e| e.seq <= last);
        if from < to {
            let freed: usize = inner.events.drain(from..to).map(|e| e.weight).sum();
            inner.bytes -= freed;
        }
        self.notify(inner);
    }

    /// The events after `after`, waiting up to `wait` for one to arrive; `None` on timeout.
    pub fn next_batch(&self, after: u64, wait: Duration) -> Option<Batch> {
        let mut inner = self.lock();
        if inner.next_seq <= after + 1 {
            inner.waiting += 1;
            inner = self
                .changed
                .wait_timeout_while(inner, wait, |i| i.next_seq <= after + 1)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            inner.waiting -= 1;
        }
        let from = inner.events.partition_point(|e| e.seq <= after);
        let mut count = 0;
        let mut bytes = 0;
        for event in inner.events.range_mut(from..) {
            let len = event.len();
            if count >= BATCH_EVENTS || (count > 0 && bytes + len > BATCH_BYTES) {
                break;
            }
            count += 1;
            bytes += len;
        }
        if count == 0 {
            return None;
        }
        let last = inner.events[from + count - 1].seq;
        let events = inner
            .events
            .range(from..from + count)
            .filter_map(|e| match &e.encoded {
                Encoded::Done(done) => Some(done),
                Encoded::Open { .. } => None,
            });
        let frame = events_frame(count, bytes, events).ok()?;
        drop(inner);
        Some(Batch { last, frame })
    }

    /// Waits up to `wait` until every event has been acknowledged.
    pub fn wait_acknowledged(&self, wait: Duration) {
        let mut inner = self.lock();
        inner.waiting += 1;
        let mut inner = self
            .changed
            .wait_timeout_while(inner, wait, |i| !i.events.is_empty())
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        inner.waiting -= 1;
    }

    /// Wakes any [`Outbox::next_batch`] waiter (used when its connection goes away).
    pub fn wake(&self) {
        self.changed.notify_all();
    }

    /// How many events `Drop` mode has discarded.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// How many events were discarded since the last call (for reporting them once).
    pub fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.lock().unreported)
    }

    /// Every event up to this one is gone (acknowledged, or dropped).
    pub fn acked(&self) -> u64 {
        let inner = self.lock();
        match inner.events.front() {
            Some(event) => event.seq - 1,
            None => inner.next_seq - 1,
        }
    }

    /// The newest event kept, or the acknowledged mark when none is.
    pub fn kept_until(&self) -> u64 {
        let inner = self.lock();
        inner.events.back().map_or(inner.next_seq - 1, |e| e.seq)
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Switches between `Block` and `Drop` (a paused producer re-checks at once).
    pub fn set_mode(&self, mode: OutputBuffering) {
        let mut inner = self.lock();
        inner.mode = mode;
        drop(inner);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_session_protocol::{Event, HostMessage};
    use std::sync::Arc;

    fn output(n: u8) -> EventBody {
        EventBody::Output {
            call_id: None,
            stderr: false,
            bytes: vec![n; 100],
        }
    }

    /// The events of a batch, decoded as the client decodes them.
    fn events(batch: &Option<Batch>) -> Vec<Event> {
        let Some(batch) = batch else {
            return Vec::new();
        };
        match nu_session_protocol::read_frame::<HostMessage>(&mut &batch.frame[..]) {
            Ok(Some(HostMessage::Events(events))) => {
                assert_eq!(events.last().map(|e| e.seq), Some(batch.last));
                events
            }
            other => panic!("not a batch of events: {other:?}"),
        }
    }

    fn seqs(batch: &Option<Batch>) -> Vec<u64> {
        events(batch).iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_stay_until_acknowledged_and_replay_from_any_point() {
        let outbox = Outbox::new(
            crate::config::DEFAULT_OUTPUT_BUFFER_BYTES,
            OutputBuffering::Block,
        );
        for n in 0..5 {
            outbox.push(output(n)).unwrap();
        }
        assert_eq!(seqs(&outbox.next_batch(0, Duration::ZERO)), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&outbox.next_batch(3, Duration::ZERO)), [4, 5]);
        outbox.ack(2);
        assert_eq!(seqs(&outbox.next_batch(0, Duration::ZERO)), [3, 4, 5]);
        assert!(outbox.next_batch(5, Duration::from_millis(10)).is_none());
    }

    fn value(call_id: u64, n: i64) -> EventBody {
        EventBody::Value {
            call_id,
            value: nu_protocol::Value::test_int(n),
        }
    }

    /// The values of a batch, in order, with the sequence number of the event each came in.
    fn values(batch: &Option<Batch>) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        for event in events(batch) {
            match event.body {
                EventBody::Values { values, .. } => {
                    out.extend(values.iter().map(|v| (event.seq, v.as_int().unwrap())))
                }
                other => panic!("not values: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn values_join_the_newest_group_until_it_is_taken() {
        let outbox = Outbox::new(
            crate::config::DEFAULT_OUTPUT_BUFFER_BYTES,
            OutputBuffering::Block,
        );
        for n in 1..=3 {
            outbox.push(value(7, n)).unwrap();
        }
        // Another invocation's value starts a group of its own.
        outbox.push(value(8, 10)).unwrap();
        let first = outbox.next_batch(0, Duration::ZERO);
        assert_eq!(values(&first), [(1, 1), (1, 2), (1, 3), (2, 10)]);
        // Taken: closed. What comes now is a new event, and a replay sends the same groups.
        outbox.push(value(8, 11)).unwrap();
        assert_eq!(
            values(&outbox.next_batch(0, Duration::ZERO)),
            [(1, 1), (1, 2), (1, 3), (2, 10), (3, 11)]
        );
        assert_eq!(values(&outbox.next_batch(2, Duration::ZERO)), [(3, 11)]);
    }

    #[test]
    fn dropping_a_group_counts_its_values() {
        // Room for the ten values (9 each by weight) and one output (132), not two.
        let outbox = Outbox::new(270, OutputBuffering::Drop);
        for n in 0..10 {
            outbox.push(value(1, n)).unwrap();
        }
        // Taken, so the next values make a new group; then output that needs the room.
        assert_eq!(values(&outbox.next_batch(0, Duration::ZERO)).len(), 10);
        outbox.push(output(1)).unwrap();
        outbox.push(output(2)).unwrap();
        assert_eq!(outbox.dropped(), 10, "the group of 10 values went");
        assert_eq!(seqs(&outbox.next_batch(0, Duration::ZERO)), [2, 3]);
    }

    #[test]
    fn block_mode_pauses_the_producer_until_acknowledged() {
        let outbox = Arc::new(Outbox::new(1000, OutputBuffering::Block));
        let producer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    outbox.push(output(n)).unwrap();
                }
            })
        };
        let mut received = Vec::new();
        while received.len() < 50 {
            let batch = outbox.next_batch(received.len() as u64, Duration::from_secs(5));
            assert!(batch.is_some(), "producer stalled");
            let batch = seqs(&batch);
            // Never more than the limit allows is held at once.
            assert!(batch.len() <= 1000 / 132 + 1, "{}", batch.len());
            received.extend(batch);
            outbox.ack(*received.last().unwrap());
        }
        producer.join().unwrap();
        assert_eq!(received, (1..=50).collect::<Vec<_>>());
        assert_eq!(outbox.dropped(), 0);
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
            outbox.push(output(n)).unwrap();
        }
        outbox
            .push(EventBody::Finished {
                call_id: 7,
                error: None,
            })
            .unwrap();
        let kept = events(&outbox.next_batch(0, Duration::ZERO));
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
            outbox.push(output(0)).unwrap();
        }
        // Full: a value would wait for acknowledgements; a `Finished` (an interrupted queued
        // call, pushed by the thread that reads those acknowledgements) goes in at once.
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
        let batch = events(&outbox.next_batch(0, Duration::ZERO));
        assert!(matches!(
            batch.last().unwrap().body,
            EventBody::Finished { call_id: 9, .. }
        ));
    }

    #[test]
    fn a_range_is_forgotten_while_older_events_stay() {
        let outbox = Outbox::new(1000, OutputBuffering::Block);
        for n in 0..6 {
            outbox.push(output(n)).unwrap();
        }
        outbox.ack_range(3, 5);
        assert_eq!(seqs(&outbox.next_batch(0, Duration::ZERO)), [1, 2, 6]);
        // Room was made: the bytes of the forgotten events are free again.
        assert_eq!(outbox.lock().bytes, 3 * output(0).weight());
        outbox.ack(2);
        assert_eq!(seqs(&outbox.next_batch(0, Duration::ZERO)), [6]);
    }

    #[test]
    fn drop_mode_keeps_a_contiguous_newest_tail() {
        let outbox = Outbox::new(1000, OutputBuffering::Drop);
        for n in 0..50 {
            outbox.push(output(n)).unwrap();
        }
        let kept = seqs(&outbox.next_batch(0, Duration::ZERO));
        assert_eq!(*kept.last().unwrap(), 50);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert_eq!(outbox.dropped(), 50 - kept.len() as u64);
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

    /// Random pushes, acknowledgements and replays in both modes, checked against a model of
    /// what must be kept: acknowledged events never come back, an invocation's start and end
    /// are never dropped, a replay from any point is exactly what is kept after it, in order,
    /// and what Drop mode drops is counted.
    #[test]
    fn property_outbox_matches_its_model_under_random_use() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let limit = 200 + rng.below(2000) as usize;
            let mode = if rng.below(2) == 0 {
                OutputBuffering::Drop
            } else {
                OutputBuffering::Block
            };
            let outbox = Outbox::new(limit, mode);
            // (seq, control, weight) of what the outbox must hold.
            let mut model: Vec<(u64, bool, usize)> = Vec::new();
            let (mut next_seq, mut acked, mut dropped) = (1u64, 0u64, 0u64);
            for _ in 0..400 {
                match rng.below(10) {
                    0..=5 => {
                        let body = match rng.below(4) {
                            0 => EventBody::Started {
                                call_id: rng.below(5),
                                stream: true,
                                bytes: None,
                            },
                            1 => EventBody::Finished {
                                call_id: rng.below(5),
                                error: None,
                            },
                            _ => EventBody::Output {
                                call_id: None,
                                stderr: false,
                                bytes: vec![0; rng.below(150) as usize],
                            },
                        };
                        // Said here, not taken from the outbox's own `droppable`.
                        let control =
                            matches!(body, EventBody::Started { .. } | EventBody::Finished { .. });
                        let weight = body.weight();
                        let held = |m: &[(u64, bool, usize)]| m.iter().map(|e| e.2).sum::<usize>();
                        let fits = |m: &[(u64, bool, usize)]| {
                            control || m.is_empty() || held(m) + weight <= limit
                        };
                        if mode == OutputBuffering::Block && !fits(&model) {
                            // It would wait for room: make it, as the client would.
                            outbox.ack(next_seq - 1);
                            acked = next_seq - 1;
                            model.clear();
                        }
                        while !fits(&model) {
                            let Some(oldest) = model.iter().position(|e| !e.1) else {
                                break;
                            };
                            model.remove(oldest);
                            dropped += 1;
                        }
                        outbox.push(body).unwrap();
                        model.push((next_seq, control, weight));
                        next_seq += 1;
                    }
                    6 | 7 => {
                        let seq = acked + rng.below(next_seq - acked);
                        outbox.ack(seq);
                        acked = acked.max(seq);
                        model.retain(|e| e.0 > acked);
                    }
                    _ => {
                        let after = rng.below(next_seq + 1);
                        let replay = seqs(&outbox.next_batch(after, Duration::ZERO));
                        let want: Vec<u64> =
                            model.iter().map(|e| e.0).filter(|s| *s > after).collect();
                        assert_eq!(replay, want, "seed {seed}: replay after {after}");
                        assert!(replay.iter().all(|s| *s > acked), "seed {seed}");
                    }
                }
            }
            let kept = seqs(&outbox.next_batch(0, Duration::ZERO));
            assert_eq!(
                kept,
                model.iter().map(|e| e.0).collect::<Vec<_>>(),
                "seed {seed}"
            );
            assert_eq!(outbox.dropped(), dropped, "seed {seed}");
        }
    }
}
