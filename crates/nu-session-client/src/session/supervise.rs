//! Supervision: runs a handle's connection, and when it fails without a disconnect, attaches
//! again with backoff, resumes each invocation's output after the last event received and sends
//! again what the host may have missed; gives up after the client's reconnect time, or learns
//! that the session is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use nu_session_protocol::{Attachment, ClientMessage, ErrorKind};
use tokio::sync::mpsc;

use super::ledger::Owner;
use super::route::read_events;
use super::{ATTEMPT_TIMEOUT, FIRST_RETRY_DELAY, Inner, Link, MAX_RETRY_DELAY, Notice, Outgoing};
use crate::transport::Wire;

/// Runs the handle's connection, and the next one each time it fails, until a disconnect, the
/// session's end, or giving up.
pub(super) async fn supervise(
    inner: Arc<Inner>,
    mut conn: Wire,
    queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut first = Vec::new();
    loop {
        let (sink, stream) = conn.split();
        // At least a little more often than the host asks: a beat late is not silence.
        let heartbeat = inner
            .attachment()
            .heartbeat
            .mul_f32(0.8)
            .max(Duration::from_millis(100));
        let writer = tokio::spawn(write_messages(
            sink,
            std::mem::take(&mut first),
            queue.clone(),
            heartbeat,
        ));
        read_events(stream, &inner).await;
        writer.abort();
        let _ = writer.await;
        // A request waiting for its answer will not get it on this connection.
        inner.state().reply = None;
        if inner.link() != Link::Up {
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
    // Every waiting consumer learns the end (from the link): why the session ended, or that
    // the connection is gone.
    inner.arrived.notify_all();
}

/// Sends what the handle queues, and a [`ClientMessage::Ping`] whenever nothing else went for a
/// `heartbeat`, so the session knows this client is alive.
async fn write_messages(
    mut sink: futures::stream::SplitSink<Wire, ClientMessage>,
    first: Vec<ClientMessage>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Outgoing>>>,
    heartbeat: Duration,
) {
    for message in first {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let mut queue = queue.lock().await;
    loop {
        let message = match tokio::time::timeout(heartbeat, queue.recv()).await {
            Ok(Some(Outgoing::Message(message))) => message,
            Ok(Some(Outgoing::Close) | None) => break,
            Err(_) => ClientMessage::Ping,
        };
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
) -> Option<(Wire, Vec<ClientMessage>)> {
    let retry_for = inner.host.shared().reconnect_for();
    let started = Instant::now();
    // Closed or disconnected meanwhile: nothing to reconnect.
    if !inner.broke() {
        return None;
    }
    let mut delay = FIRST_RETRY_DELAY;
    let mut last_error;
    // The user hears of it once the first attempt (made at once) has failed: a session that
    // ended, or a connection back within moments, needs no warning first.
    let mut announced = false;
    loop {
        if inner.link() != Link::Reconnecting {
            // Closed meanwhile.
            return None;
        }
        let resume = inner.state().ledger.resume();
        let attempt = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            inner.host.attach_conn(inner.instance_id, resume),
        )
        .await;
        match attempt {
            Ok(Ok((conn, attachment))) => {
                let resend = resume_messages(inner, &attachment, queue).await;
                *inner.attachment() = attachment;
                if !inner.set_link_from(Link::Reconnecting, Link::Up) {
                    return None;
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
                    inner.end(&reason);
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
    // Invocations another client ran while this one was away are the backlog's.
    for call_id in attachment.kept.iter().chain(&attachment.pending_calls) {
        state.ledger.expect(*call_id, Owner::Backlog);
    }
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
    state.ledger.acknowledge_again();
    messages.extend(state.ledger.messages());
    messages
}
