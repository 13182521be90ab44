//! The acknowledgement ledger: for each invocation's output, what arrived from the host, what
//! its consumer took and what it consumed, and what the host must be told. It does no I/O and
//! takes no locks: its methods change it and leave the messages to send in
//! [`Ledger::messages`] (checked against a model in its tests, as the host's outbox is).
//!
//! - **Streams.** Each invocation's output is a stream of its own, owned by this client's
//!   [`super::Call`] for it, kept for a receive (output of invocations started elsewhere or
//!   detached: the backlog), or discarded (a call given up). What the session printed while no
//!   invocation ran is kept apart ([`Ledger::take_loose`]) and acknowledged at once.
//! - **Taken and consumed.** A consumer takes items one by one; what it took is consumed only
//!   when it says so ([`Ledger::confirm`], by the ticket of the last item it handed on), so a
//!   client killed meanwhile, or a consumer that stopped early ([`Ledger::untake`]), leaves the
//!   rest for the next receive, exactly.
//! - **Acknowledgements** are cumulative per stream and may end inside a group of values
//!   ([`Ack::part`]). One goes when a quarter of the window was consumed since the last, when
//!   the stream ended, or when its consumer waits ([`Ledger::flush`]).
//! - **Flow control.** The host sends a stream's output only as far as `window` of it is
//!   unacknowledged (the client says how much when it attaches), so nothing here holds more than
//!   that per stream. A host that sends more, or more than `total_limit` in all, is broken or
//!   hostile: [`Ledger::arrive`] refuses it. Output of an invocation this client does not know
//!   is dropped, never kept.

use std::collections::{BTreeMap, VecDeque};

use nu_session_protocol::{Ack, ClientMessage, Event, EventBody, Received};

use super::CallEvent;

/// How many ended streams are remembered (see [`Ledger::ended`]).
const ENDED_KEPT: usize = 4096;

/// Who consumes a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// One of this client's calls.
    Call,
    /// Kept for a receive: started elsewhere, or detached here.
    Backlog,
    /// Given up here: what comes is consumed at once.
    Discard,
}

/// Where an item ends in its stream, as an acknowledgement says it: after event `seq`, or
/// inside it (a group of values), before the value at index `part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    part: Option<u32>,
}

/// Which item a consumer took: the stream and its place among what was taken there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub call_id: u64,
    pub(crate) taken: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Fresh,
    Taken(u64),
    Consumed,
}

#[derive(Debug)]
struct Item {
    /// `None` for what the host reported rather than sent (a drop).
    mark: Option<Mark>,
    /// The stream's `Finished`: nothing comes after it.
    last: bool,
    cost: usize,
    /// Moved out when a call takes it (a call never gives back); kept for a receive, which
    /// may (see [`Ledger::untake`]).
    event: Option<CallEvent>,
    state: ItemState,
}

#[derive(Debug)]
struct Stream {
    owner: Owner,
    /// The most of it the host may have sent and not had acknowledged: the largest window
    /// granted (lowering one takes effect on the host at once, but what was sent under the
    /// larger one may still come).
    window: usize,
    items: VecDeque<Item>,
    /// The newest event received.
    received: u64,
    /// What the items hold (not consumed yet).
    cost: usize,
    /// What was consumed, and what was last acknowledged.
    consumed: Option<Mark>,
    acked: Option<Mark>,
    /// Cost consumed since the last acknowledgement.
    unacked: usize,
    /// How many items were taken so far (tickets count from 1).
    taken: u64,
    /// No item before this index is fresh (where a take starts looking).
    fresh: usize,
    /// Its `Finished` was taken: its consumer has everything.
    finish_taken: bool,
    /// Its `Finished` was consumed: nothing more comes.
    ended: bool,
}

impl Stream {
    fn new(owner: Owner, window: usize) -> Stream {
        Stream {
            owner,
            window,
            items: VecDeque::new(),
            received: 0,
            cost: 0,
            consumed: None,
            acked: None,
            unacked: 0,
            taken: 0,
            fresh: 0,
            finish_taken: false,
            ended: false,
        }
    }
}

/// Why the host's output was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation(pub String);

pub(crate) struct Ledger {
    window: usize,
    total_limit: usize,
    /// What all streams hold.
    total: usize,
    streams: BTreeMap<u64, Stream>,
    /// Streams that ended here, with what was received and acknowledged of them: their
    /// acknowledgement is sent again on a new connection (the old one may have lost it), and
    /// the host is told they are had, so that they never come twice. The newest [`ENDED_KEPT`].
    ended: BTreeMap<u64, (u64, Mark)>,
    /// What the session printed while no invocation ran: shown by the next call or receive,
    /// at most `loose_limit` bytes, the oldest given up first.
    loose: VecDeque<CallEvent>,
    loose_bytes: usize,
    loose_limit: usize,
    /// This client is going away without consuming more: nothing more is acknowledged.
    frozen: bool,
    out: Vec<ClientMessage>,
}

impl Ledger {
    pub fn new(window: usize, total_limit: usize, loose_limit: usize) -> Ledger {
        Ledger {
            window,
            total_limit,
            total: 0,
            streams: BTreeMap::new(),
            ended: BTreeMap::new(),
            loose: VecDeque::new(),
            loose_bytes: 0,
            loose_limit,
            frozen: false,
            out: Vec::new(),
        }
    }

    /// The messages to send, in order.
    pub fn messages(&mut self) -> Vec<ClientMessage> {
        std::mem::take(&mut self.out)
    }

    /// The output of `call_id` is `owner`'s from now on (a new call or detached invocation, or
    /// one found in the backlog). A stream already known keeps its owner, unless it is given
    /// up ([`Ledger::discard`]).
    pub fn expect(&mut self, call_id: u64, owner: Owner) {
        if !self.ended.contains_key(&call_id) {
            let window = self.window;
            self.streams
                .entry(call_id)
                .or_insert_with(|| Stream::new(owner, window));
        }
    }

    /// `call_id`'s consumer holds up to `window` of its output before handing it on (or, with
    /// `None`, goes back to the usual window).
    pub fn set_window(&mut self, call_id: u64, window: Option<usize>) {
        let window = window.unwrap_or(self.window);
        let Some(stream) = self.streams.get_mut(&call_id) else {
            return;
        };
        stream.window = stream.window.max(window);
        if !self.frozen {
            self.out.push(ClientMessage::Window {
                call_id,
                window: window as u64,
            });
        }
    }

    /// Gives up `call_id`'s output: what it holds and what comes is consumed at once.
    pub fn discard(&mut self, call_id: u64) {
        let Some(stream) = self.streams.get_mut(&call_id) else {
            return;
        };
        stream.owner = Owner::Discard;
        for item in &mut stream.items {
            item.state = ItemState::Consumed;
        }
        self.advance(call_id);
    }

    /// Takes in what the host sent. An error when it sent more than the windows allow.
    pub fn arrive(&mut self, events: Vec<Event>) -> Result<(), Violation> {
        for Event { seq, body } in events {
            let Some(call_id) = body.call_id() else {
                self.keep_loose(seq, body);
                continue;
            };
            let Some(stream) = self.streams.get_mut(&call_id) else {
                // Not ours, not in the backlog: nobody will consume it here.
                continue;
            };
            if seq <= stream.received {
                // Had already (sent again after a reconnect).
                continue;
            }
            let cost = body.cost();
            if stream.cost > 0 && stream.cost + cost > stream.window {
                return Err(Violation(format!(
                    "the host sent more output of invocation {call_id} than this client has room for ({} at most)",
                    nu_session_protocol::human_bytes(stream.window)
                )));
            }
            if self.total > 0 && self.total + cost > self.total_limit {
                return Err(Violation(format!(
                    "the host sent more output than this client keeps ({} at most)",
                    nu_session_protocol::human_bytes(self.total_limit)
                )));
            }
            stream.received = seq;
            stream.cost += cost;
            self.total += cost;
            for (mark, cost, event) in items(seq, body) {
                stream.items.push_back(Item {
                    mark: Some(mark),
                    last: matches!(event, CallEvent::Finished(_)),
                    cost,
                    event: Some(event),
                    state: ItemState::Fresh,
                });
            }
            if stream.owner == Owner::Discard {
                for item in &mut stream.items {
                    item.state = ItemState::Consumed;
                }
                self.advance(call_id);
            }
        }
        Ok(())
    }

    /// The host dropped `count` values or pieces of `call_id`'s output to make room: said to
    /// its consumer where it happened.
    pub fn dropped(&mut self, call_id: Option<u64>, count: u64) {
        let event = CallEvent::Dropped(count);
        let Some(call_id) = call_id else {
            self.loose.push_back(event);
            return;
        };
        if let Some(stream) = self.streams.get_mut(&call_id) {
            stream.items.push_back(Item {
                mark: None,
                last: false,
                cost: 0,
                event: Some(event),
                state: ItemState::Fresh,
            });
            if stream.owner == Owner::Discard {
                self.discard(call_id);
            }
        }
    }

    fn keep_loose(&mut self, seq: u64, body: EventBody) {
        if let EventBody::Output { stderr, bytes, .. } = body {
            let event = CallEvent::Output { stderr, bytes };
            self.loose_bytes += event.cost();
            self.loose.push_back(event);
            while self.loose_bytes > self.loose_limit
                && let Some(gone) = self.loose.pop_front()
            {
                self.loose_bytes -= gone.cost();
            }
        }
        // Done with at once: it is here, or given up.
        self.send(Ack {
            call_id: None,
            seq,
            part: None,
        });
    }

    /// What the session printed while no invocation ran, for the next call or receive to show.
    pub fn take_loose(&mut self) -> Vec<CallEvent> {
        self.loose_bytes = 0;
        self.loose.drain(..).collect()
    }

    /// The next item of `call_id`'s output not taken yet, with its ticket.
    pub fn take(&mut self, call_id: u64) -> Option<(CallEvent, Ticket)> {
        let stream = self.streams.get_mut(&call_id)?;
        let keep = stream.owner == Owner::Backlog;
        let at = stream.fresh
            + stream
                .items
                .range(stream.fresh..)
                .position(|i| i.state == ItemState::Fresh)?;
        stream.fresh = at + 1;
        let item = &mut stream.items[at];
        stream.taken += 1;
        item.state = ItemState::Taken(stream.taken);
        stream.finish_taken |= item.last;
        let event = if keep {
            item.event.clone()
        } else {
            item.event.take()
        }?;
        Some((
            event,
            Ticket {
                call_id,
                taken: stream.taken,
            },
        ))
    }

    /// Everything taken of `ticket`'s stream up to it is consumed.
    pub fn confirm(&mut self, ticket: Ticket) {
        let Some(stream) = self.streams.get_mut(&ticket.call_id) else {
            return;
        };
        // Taken in order: the items up to the ticket are at the front.
        for item in stream.items.range_mut(..stream.fresh) {
            match item.state {
                ItemState::Taken(n) if n <= ticket.taken => item.state = ItemState::Consumed,
                ItemState::Taken(_) => break,
                _ => {}
            }
        }
        self.advance(ticket.call_id);
    }

    /// What was taken of `call_id`'s output and not consumed is given back: the next take
    /// gets it again.
    pub fn untake(&mut self, call_id: u64) {
        let Some(stream) = self.streams.get_mut(&call_id) else {
            return;
        };
        for item in &mut stream.items {
            if matches!(item.state, ItemState::Taken(_)) && item.event.is_some() {
                item.state = ItemState::Fresh;
                stream.finish_taken &= !item.last;
            }
        }
        stream.fresh = 0;
    }

    /// Acknowledges what was consumed of `call_id`'s output and not acknowledged yet (its
    /// consumer waits: the host may be waiting for room).
    pub fn flush(&mut self, call_id: u64) {
        if let Some(stream) = self.streams.get_mut(&call_id)
            && stream.consumed != stream.acked
            && let Some(mark) = stream.consumed
        {
            stream.acked = Some(mark);
            stream.unacked = 0;
            self.send(Ack {
                call_id: Some(call_id),
                seq: mark.seq,
                part: mark.part,
            });
        }
    }

    /// Forgets the consumed front of the stream; acknowledges it when it is time.
    fn advance(&mut self, call_id: u64) {
        let window = self.window;
        let Some(stream) = self.streams.get_mut(&call_id) else {
            return;
        };
        while stream
            .items
            .front()
            .is_some_and(|i| i.state == ItemState::Consumed)
        {
            let item = stream.items.pop_front().expect("checked above");
            stream.fresh = stream.fresh.saturating_sub(1);
            stream.cost -= item.cost;
            self.total -= item.cost;
            if let Some(mark) = item.mark {
                stream.consumed = Some(mark);
                stream.unacked += item.cost;
            }
            stream.ended |= item.last;
        }
        let due = stream.ended || stream.owner == Owner::Discard || stream.unacked >= window / 4;
        let gone = stream.ended && stream.items.is_empty();
        if due {
            self.flush(call_id);
        }
        if gone && let Some(stream) = self.streams.remove(&call_id) {
            if let Some(mark) = stream.acked {
                self.ended.insert(call_id, (stream.received, mark));
            }
            while self.ended.len() > ENDED_KEPT {
                self.ended.pop_first();
            }
        }
    }

    /// Whether `call_id`'s output ended (its `Finished` consumed) or is not known here.
    pub fn ended(&self, call_id: u64) -> bool {
        self.streams.get(&call_id).is_none_or(|s| s.ended)
    }

    /// The backlog's invocations whose end has not been taken, in order.
    pub fn backlog(&self) -> Vec<u64> {
        self.streams
            .iter()
            .filter(|(_, s)| s.owner == Owner::Backlog && !s.finish_taken)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The backlog's invocations with output taken and not all consumed.
    pub fn backlog_taken(&self) -> Vec<u64> {
        self.streams
            .iter()
            .filter(|(_, s)| s.owner == Owner::Backlog && s.finish_taken && !s.ended)
            .map(|(id, _)| *id)
            .collect()
    }

    /// What this client has of each invocation's output, for attaching again after a broken
    /// connection (so that the host sends only what is newer).
    pub fn resume(&self) -> Vec<Received> {
        let live = self.streams.iter().map(|(id, s)| (*id, s.received));
        let ended = self
            .ended
            .iter()
            .map(|(id, (received, _))| (*id, *received));
        live.chain(ended)
            .filter(|(_, seq)| *seq > 0)
            .map(|(call_id, seq)| Received { call_id, seq })
            .collect()
    }

    /// On a new connection: the acknowledgements the old one may have lost, again.
    pub fn acknowledge_again(&mut self) {
        let live = self
            .streams
            .iter()
            .filter_map(|(id, s)| Some((*id, s.acked?)));
        let ended = self.ended.iter().map(|(id, (_, mark))| (*id, *mark));
        let acks: Vec<Ack> = live
            .chain(ended)
            .map(|(id, mark)| Ack {
                call_id: Some(id),
                seq: mark.seq,
                part: mark.part,
            })
            .collect();
        for ack in acks {
            self.send(ack);
        }
    }

    /// This client goes away without consuming more: what it did not acknowledge stays on
    /// the host.
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.out.clear();
    }

    fn send(&mut self, ack: Ack) {
        if !self.frozen {
            self.out.push(ClientMessage::Ack(ack));
        }
    }
}

/// The items an event is, with where each ends: a group of values is one per value.
fn items(seq: u64, body: EventBody) -> Vec<(Mark, usize, CallEvent)> {
    let whole = Mark { seq, part: None };
    match body {
        EventBody::Values { first, values, .. } => {
            let last = values.len().saturating_sub(1);
            values
                .into_iter()
                .enumerate()
                .map(|(n, value)| {
                    let part = (n < last).then(|| first + n as u32 + 1);
                    let cost = nu_session_protocol::value_cost(&value);
                    (Mark { seq, part }, cost, CallEvent::Value(value))
                })
                .collect()
        }
        body => {
            let cost = body.cost();
            let event = match body {
                EventBody::Started { stream, bytes, .. } => CallEvent::Started { stream, bytes },
                EventBody::Value { value, .. } => CallEvent::Value(value),
                EventBody::Bytes { bytes, .. } => CallEvent::Bytes(bytes),
                EventBody::Output { stderr, bytes, .. } => CallEvent::Output { stderr, bytes },
                EventBody::Finished { error, .. } => CallEvent::Finished(error),
                EventBody::Values { .. } => unreachable!("matched above"),
            };
            vec![(whole, cost, event)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_protocol::{Span, Value};
    use nu_session_protocol::value_cost;

    fn int(i: i64) -> Value {
        Value::int(i, Span::unknown())
    }

    fn acks(ledger: &mut Ledger) -> Vec<Ack> {
        ledger
            .messages()
            .into_iter()
            .filter_map(|m| match m {
                ClientMessage::Ack(ack) => Some(ack),
                _ => None,
            })
            .collect()
    }

    fn group(seq: u64, call_id: u64, first: u32, values: std::ops::Range<i64>) -> Event {
        Event {
            seq,
            body: EventBody::Values {
                call_id,
                first,
                values: values.map(int).collect(),
            },
        }
    }

    fn finished(seq: u64, call_id: u64) -> Event {
        Event {
            seq,
            body: EventBody::Finished {
                call_id,
                error: None,
            },
        }
    }

    fn take_int(ledger: &mut Ledger, call_id: u64) -> (i64, Ticket) {
        match ledger.take(call_id) {
            Some((CallEvent::Value(v), ticket)) => (v.as_int().unwrap(), ticket),
            other => panic!("not a value: {other:?}"),
        }
    }

    #[test]
    fn a_consumer_that_stops_inside_a_group_acknowledges_only_what_it_handed_on() {
        let mut ledger = Ledger::new(1 << 20, 1 << 30, 1 << 20);
        ledger.expect(7, Owner::Backlog);
        ledger.arrive(vec![group(4, 7, 0, 0..50)]).unwrap();
        let mut last = None;
        for want in 0..3 {
            let (got, ticket) = take_int(&mut ledger, 7);
            assert_eq!(got, want);
            last = Some(ticket);
        }
        // Four more were taken but not handed on: they come again.
        for _ in 0..4 {
            take_int(&mut ledger, 7);
        }
        ledger.confirm(last.unwrap());
        ledger.untake(7);
        ledger.flush(7);
        assert_eq!(
            acks(&mut ledger),
            [Ack {
                call_id: Some(7),
                seq: 4,
                part: Some(3)
            }]
        );
        assert_eq!(take_int(&mut ledger, 7).0, 3);
        // Nothing is acknowledged twice.
        ledger.flush(7);
        assert!(acks(&mut ledger).is_empty());
    }

    #[test]
    fn the_end_of_a_stream_is_acknowledged_at_once_and_its_repeats_are_ignored() {
        let mut ledger = Ledger::new(1 << 20, 1 << 30, 1 << 20);
        ledger.expect(3, Owner::Call);
        ledger
            .arrive(vec![group(1, 3, 0, 0..2), finished(2, 3)])
            .unwrap();
        for _ in 0..3 {
            let (_, ticket) = ledger.take(3).unwrap();
            ledger.confirm(ticket);
        }
        assert_eq!(
            acks(&mut ledger),
            [Ack {
                call_id: Some(3),
                seq: 2,
                part: None
            }]
        );
        assert!(ledger.ended(3));
        // After a reconnect: the host is told it has them, and repeats are ignored.
        assert_eq!(ledger.resume(), [Received { call_id: 3, seq: 2 }]);
        ledger.arrive(vec![finished(2, 3)]).unwrap();
        assert!(ledger.take(3).is_none());
        ledger.acknowledge_again();
        assert_eq!(acks(&mut ledger).len(), 1);
    }

    #[test]
    fn more_than_the_window_is_refused_and_a_stranger_s_output_is_not_kept() {
        let mut ledger = Ledger::new(1000, 1 << 30, 1 << 20);
        ledger.expect(1, Owner::Call);
        // One event always fits, whatever its size.
        ledger.arrive(vec![group(1, 1, 0, 0..30)]).unwrap();
        let refused = ledger.arrive(vec![group(2, 1, 0, 0..1)]);
        assert!(refused.is_err(), "past the window");
        // Output of an invocation this client neither started nor was told of.
        let mut other = Ledger::new(1000, 1 << 30, 1 << 20);
        other.arrive(vec![group(1, 999, 0, 0..1000)]).unwrap();
        assert_eq!(other.total, 0);
        // A consumer that holds a whole result asks for more, and may get it.
        let mut held = Ledger::new(1000, 1 << 30, 1 << 20);
        held.expect(1, Owner::Call);
        held.set_window(1, Some(1 << 20));
        assert!(matches!(
            held.messages()[..],
            [ClientMessage::Window { call_id: 1, window }] if window == 1 << 20
        ));
        held.arrive(vec![group(1, 1, 0, 0..30), group(2, 1, 0, 0..30)])
            .unwrap();
    }

    #[test]
    fn printed_output_between_invocations_is_kept_bounded_and_acknowledged_at_once() {
        let mut ledger = Ledger::new(1 << 20, 1 << 30, 1000);
        let printed = |seq, n| Event {
            seq,
            body: EventBody::Output {
                call_id: None,
                stderr: true,
                bytes: vec![b'x'; n],
            },
        };
        ledger
            .arrive((1..=3).map(|seq| printed(seq, 400)).collect())
            .unwrap();
        assert_eq!(acks(&mut ledger).len(), 3);
        assert_eq!(ledger.take_loose().len(), 2, "the oldest made room");
        // Empty pieces count too: a flood of them stays bounded.
        ledger
            .arrive((4..200_004).map(|seq| printed(seq, 0)).collect())
            .unwrap();
        assert!(ledger.loose.len() <= 1000 / 32, "{}", ledger.loose.len());
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

    /// Random arrivals (groups, single events, repeats), takes, confirmations, give-backs and
    /// flushes on a few streams, checked against a model of one consumer: items are taken in
    /// order, each once, except that what was given back comes again in the same order; an
    /// acknowledgement never covers an item not handed on and never goes back; after a flush
    /// it covers exactly what was handed on; and what the ledger holds is what is not consumed.
    #[test]
    fn property_ledger_matches_its_model_under_random_use() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut ledger = Ledger::new(1 << 30, 1 << 40, 1 << 20);
            let calls = [1u64, 2, 3];
            // Per stream: every item sent, by (seq, index in its event, value), its end mark;
            // how many were handed on, and taken.
            #[derive(Default)]
            struct Model {
                items: Vec<(Mark, i64)>,
                next_seq: u64,
                handed_on: usize,
                taken: Vec<(usize, Ticket)>,
                acked: Option<Mark>,
            }
            let mut model: std::collections::HashMap<u64, Model> = Default::default();
            for call in calls {
                ledger.expect(call, Owner::Backlog);
                model.insert(call, Model::default());
            }
            let mut counter = 0i64;
            for step in 0..400 {
                let at = format!("seed {seed}, step {step}");
                let call = calls[rng.below(3) as usize];
                let m = model.get_mut(&call).unwrap();
                match rng.below(8) {
                    0 | 1 => {
                        m.next_seq += 1 + rng.below(3);
                        let seq = m.next_seq;
                        let n = 1 + rng.below(5) as i64;
                        let values: Vec<i64> = (counter..counter + n).collect();
                        counter += n;
                        for (i, v) in values.iter().enumerate() {
                            let part = (i + 1 < values.len()).then_some(i as u32 + 1);
                            m.items.push((Mark { seq, part }, *v));
                        }
                        let event = group(seq, call, 0, values[0]..values[0] + n);
                        // Sometimes sent twice (a replay).
                        let mut batch = vec![event.clone()];
                        if rng.below(4) == 0 {
                            batch.push(event);
                        }
                        ledger.arrive(batch).unwrap();
                    }
                    2 | 3 => {
                        let next = m.handed_on + m.taken.len();
                        match ledger.take(call) {
                            Some((CallEvent::Value(v), ticket)) => {
                                assert_eq!(v.as_int().unwrap(), m.items[next].1, "{at}");
                                m.taken.push((next, ticket));
                            }
                            Some(other) => panic!("{at}: {other:?}"),
                            None => assert_eq!(next, m.items.len(), "{at}: nothing to take"),
                        }
                    }
                    4 | 5 if !m.taken.is_empty() => {
                        let upto = rng.below(m.taken.len() as u64) as usize;
                        let (index, ticket) = m.taken[upto];
                        ledger.confirm(ticket);
                        m.handed_on = index + 1;
                        m.taken.drain(..=upto);
                    }
                    6 => {
                        ledger.untake(call);
                        m.taken.clear();
                    }
                    _ => {
                        ledger.flush(call);
                        if m.handed_on > 0 {
                            m.acked = Some(m.items[m.handed_on - 1].0);
                        }
                    }
                }
                for ack in acks(&mut ledger) {
                    let id = ack.call_id.unwrap();
                    let m = &model[&id];
                    let mark = Mark {
                        seq: ack.seq,
                        part: ack.part,
                    };
                    let covered = m.items.iter().position(|i| i.0 == mark);
                    let covered =
                        covered.unwrap_or_else(|| panic!("{at}: {mark:?} is no item's end"));
                    assert!(
                        covered < m.handed_on,
                        "{at}: acknowledged what was not handed on"
                    );
                }
                for (id, m) in &model {
                    if let Some(acked) = m.acked {
                        assert_eq!(ledger.streams[id].acked, Some(acked), "{at}");
                    }
                }
                let held: usize = model
                    .values()
                    .map(|m| {
                        m.items[m.handed_on..]
                            .iter()
                            .map(|i| value_cost(&int(i.1)))
                            .sum::<usize>()
                    })
                    .sum();
                assert_eq!(ledger.total, held, "{at}");
            }
        }
    }
}
