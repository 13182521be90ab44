//! Routing: the reader of a connection puts what the host sends into the ledger (each
//! invocation's output into its stream), answers to requests to whoever waits for them, and
//! wakes the consumers. It never waits for a consumer: flow control keeps what arrives within
//! what the ledger holds, and a host that sends more is cut off.

use futures::StreamExt;
use nu_session_protocol::{ErrorKind, Event, EventBody, HostMessage};

use super::Inner;
use crate::transport::Wire;

/// Reads the host's messages until the connection ends.
pub(super) async fn read_events(mut stream: futures::stream::SplitStream<Wire>, inner: &Inner) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            HostMessage::Events(events) => {
                let events: Vec<Event> = events.into_iter().map(printable).collect();
                let mut state = inner.state();
                // What the host shows it has is not sent again after a reconnect.
                let mut ended = None;
                for event in &events {
                    if let Some(id) = event.body.call_id() {
                        state.unconfirmed.remove(&id);
                    }
                    if let EventBody::Finished { call_id, error } = &event.body {
                        state.interrupted.remove(call_id);
                        if let Some(error) = error.as_ref().filter(|e| e.kind == ErrorKind::Ended) {
                            ended = Some(error.msg.clone());
                        }
                    }
                }
                let refused = state.ledger.arrive(events);
                inner.settle(state);
                if let Some(reason) = ended {
                    inner.end(&reason);
                }
                if let Err(violation) = refused {
                    // Broken or hostile: nothing more is read from it, and it is not reattached
                    // (it would do it again); the calls learn why.
                    inner.set_link(super::Link::Down(violation.0));
                    return;
                }
            }
            HostMessage::Dropped { call_id, count } => {
                let mut state = inner.state();
                state.ledger.dropped(call_id, count);
                inner.settle(state);
            }
            HostMessage::Disconnected(_) => {
                if let Some(reply) = inner.state().reply.take() {
                    let _ = reply.send(message);
                }
            }
            HostMessage::Error(error) => {
                let mut state = inner.state();
                if let Some(reply) = state.reply.take() {
                    let _ = reply.send(HostMessage::Error(error));
                    continue;
                }
                // Errors about requests without an answer of their own (an invocation sent
                // while not attached) end the current calls: nothing more will come for them.
                let calls: Vec<u64> = state.unconfirmed.keys().copied().collect();
                for call_id in calls {
                    state.failed.insert(call_id, error.clone());
                }
                inner.settle(state);
            }
            _ => {}
        }
    }
}

/// An event as the consumers get it: errors made safe for a terminal.
fn printable(mut event: Event) -> Event {
    if let EventBody::Finished { error, .. } = &mut event.body {
        *error = error.take().map(crate::text::printable_error);
    }
    event
}
