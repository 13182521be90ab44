//! Routing: the reader of a connection hands each event to its [`super::Call`], to the backlog
//! (for [`super::Receive`]), or discards it, in batches of one destination, and records what
//! was received for acknowledging and resuming.

use futures::StreamExt;
use nu_session_protocol::{ErrorKind, Event, EventBody, HostMessage, RemoteError};

use super::consume::Batch;
use super::{BACKLOG_LIMIT, CallEvent, Inner};
use crate::transport::Wire;

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Call(u64),
    Backlog,
    /// Printed while no invocation ran: kept for the next call or receive.
    Loose,
    Discard,
}

/// Reads the host's messages until the connection ends.
pub(super) async fn read_events(mut stream: futures::stream::SplitStream<Wire>, inner: &Inner) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            HostMessage::Events(mut events) => {
                // Numbers only go up: an event at or below one received is a repeat (or a
                // broken host's 0), never delivered twice.
                {
                    let mut last = inner.state().received;
                    events.retain(|event| {
                        let new = event.seq > last;
                        last = last.max(event.seq);
                        new
                    });
                }
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
                finish_calls(inner, &error).await;
            }
            _ => {}
        }
    }
}

/// Every waiting call ends with `error`.
pub(super) async fn finish_calls(inner: &Inner, error: &RemoteError) {
    let senders: Vec<_> = inner.state().calls.drain().collect();
    for (_, sender) in senders {
        let batch = Batch {
            first: 0,
            events: vec![CallEvent::Finished(Some(error.clone()))],
            weight: 0,
        };
        let _ = sender.send(batch).await;
    }
}

/// Hands events to their calls or the backlog, one batch per run of the same destination.
async fn deliver(inner: &Inner, events: Vec<Event>) {
    let mut run: Vec<(u64, Option<u64>, CallEvent)> = Vec::new();
    let mut run_to = Destination::Discard;
    let mut expanded = Vec::with_capacity(events.len());
    for event in events {
        split(inner, event.seq, event.body, &mut expanded);
    }
    for (seq, call_id, call_event) in expanded {
        let finished = matches!(call_event, CallEvent::Finished(_));
        let to = destination(inner, call_id, finished);
        if to != run_to && !run.is_empty() {
            hand_over(inner, run_to, std::mem::take(&mut run)).await;
        }
        run_to = to;
        if matches!(to, Destination::Call(_) | Destination::Backlog) {
            let dropped = std::mem::take(&mut inner.state().dropped);
            if dropped > 0 {
                run.push((seq, call_id, CallEvent::Dropped(dropped)));
            }
        }
        run.push((seq, call_id, call_event));
    }
    if !run.is_empty() {
        hand_over(inner, run_to, run).await;
    }
}

/// The event as what its invocation's consumer gets, added to `out` with its sequence number
/// and invocation: a group of values (one event) is several.
fn split(inner: &Inner, seq: u64, body: EventBody, out: &mut Vec<(u64, Option<u64>, CallEvent)>) {
    let (call_id, event) = match body {
        EventBody::Values { call_id, values } => {
            out.extend(
                values
                    .into_iter()
                    .map(|value| (seq, Some(call_id), CallEvent::Value(value))),
            );
            return;
        }
        EventBody::Started {
            call_id,
            stream,
            bytes,
        } => (Some(call_id), CallEvent::Started { stream, bytes }),
        EventBody::Bytes { call_id, bytes } => (Some(call_id), CallEvent::Bytes(bytes)),
        EventBody::Value { call_id, value } => (Some(call_id), CallEvent::Value(value)),
        EventBody::Output {
            call_id,
            stderr,
            bytes,
        } => (call_id, CallEvent::Output { stderr, bytes }),
        EventBody::Finished { call_id, error } => {
            let error = error.map(crate::text::printable_error);
            if let Some(error) = error.as_ref().filter(|e| e.kind == ErrorKind::Ended) {
                inner.end(&error.msg);
            }
            (Some(call_id), CallEvent::Finished(error))
        }
    };
    out.push((seq, call_id, event));
}

fn destination(inner: &Inner, call_id: Option<u64>, finished: bool) -> Destination {
    let Some(call_id) = call_id else {
        // Printed while no invocation ran (a background job): shown by the next one.
        return Destination::Loose;
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
        // Done with at once: acknowledged, by range when older events are still held (so a
        // reconnect does not bring them back).
        Destination::Discard => inner.state().done_with(first, last),
        Destination::Loose => {
            let mut state = inner.state();
            state.keep_loose(run.into_iter().map(|(_, _, event)| event));
            state.done_with(first, last);
        }
        Destination::Backlog => {
            let mut state = inner.state();
            for (_, call_id, event) in &run {
                if let (Some(id), CallEvent::Finished(_)) = (call_id, event) {
                    state.foreign_pending.remove(id);
                }
            }
            let weight = run.iter().map(|(_, _, e)| weight(e)).sum::<usize>().max(1);
            if state.backlog_bytes > 0 && state.backlog_bytes + weight > BACKLOG_LIMIT {
                // Nobody receives it, and there is too much already: left on the host (never
                // acknowledged), and said to whoever receives next.
                state.withheld_from.get_or_insert(first);
                state.withheld += run.len() as u64;
                return;
            }
            let mut events: Vec<_> = run.into_iter().map(|(_, id, e)| (id, e)).collect();
            let withheld = std::mem::take(&mut state.withheld);
            if withheld > 0 {
                events.insert(0, (None, CallEvent::Withheld(withheld)));
            }
            state.outstanding.insert(first, last);
            state.backlog_bytes += weight;
            let batch = Batch {
                first,
                events,
                weight,
            };
            if state.backlog.send(batch).is_err() {
                state.backlog_bytes -= weight;
                state.release(first);
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
                weight: 0,
            };
            // Waits while the caller is slower than the session: back-pressure reaches the host.
            if sender.send(batch).await.is_err() {
                inner.state().release(first);
            }
        }
    }
}

/// What an event weighs in memory, about (for the bounds of the backlog and of loose output).
pub(super) fn weight(event: &CallEvent) -> usize {
    const BASE: usize = 32;
    BASE + match event {
        CallEvent::Value(value) => nu_session_protocol::value_weight(value),
        CallEvent::Bytes(bytes) | CallEvent::Output { bytes, .. } => bytes.len(),
        CallEvent::Finished(Some(error)) => error_weight(error),
        _ => 0,
    }
}

fn error_weight(error: &nu_session_protocol::RemoteError) -> usize {
    error.msg.len()
        + error.help.as_ref().map_or(0, String::len)
        + error.code.as_ref().map_or(0, String::len)
        + error
            .labels
            .iter()
            .map(|l| 32 + l.text.len())
            .sum::<usize>()
        + error.inner.iter().map(error_weight).sum::<usize>()
}
