//! Serving: one thread per connection reads its requests — attaching (and taking over from the
//! same client's broken connection), disconnecting, invocations (each client's duplicates
//! ignored), interrupts, acknowledgements — and detaches the session when the attached
//! connection closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use nu_session_protocol::{
    Attachment, ClientMessage, ErrorKind, Hello, HostMessage, OutputBuffering, Received,
    RemoteError,
};
use std::os::unix::net::UnixStream;
use uuid::Uuid;

use super::sending::send_output;
use super::{State, Worker};
use crate::conn::{Conn, Writer};
use crate::log;

/// The smallest window a client may ask for: one event at a time would crawl.
const MIN_WINDOW: usize = 64 * 1024;

/// Serves one connection until it closes.
pub(super) fn serve(worker: &Arc<Worker>, stream: UnixStream) {
    let conn_id = worker.next_conn.fetch_add(1, Ordering::SeqCst);
    let mut conn = match Conn::accept(stream, &Hello::host(worker.layout.root())) {
        Ok(Some(conn)) => conn,
        Ok(None) => return,
        Err(e) => {
            log!("connection {conn_id}: {e}");
            return;
        }
    };
    let writer = conn.writer.clone();
    let closed = Arc::new(AtomicBool::new(false));
    loop {
        let message = match conn.recv() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                log!("connection {conn_id}: {e}");
                break;
            }
        };
        {
            let mut state = worker.lock();
            if state.attached_conn == Some(conn_id) {
                state.heard = Instant::now();
            }
        }
        let reply = match message {
            ClientMessage::Attach {
                instance_id,
                client,
                resume,
                window,
            } => {
                let request = AttachRequest {
                    conn_id,
                    instance_id,
                    client,
                    resume,
                    window,
                };
                attach(worker, request, &writer, &closed)
            }
            ClientMessage::Disconnect {
                idle_timeout,
                output_buffering,
            } => disconnect(worker, conn_id, idle_timeout, output_buffering, &closed),
            ClientMessage::Invoke(invocation) => {
                let mut state = worker.lock();
                if state.attached_conn == Some(conn_id) {
                    let call_id = invocation.call_id;
                    let again = match state.info.attached_client {
                        Some(client) => {
                            let last = state.last_call.entry(client).or_default();
                            let again = call_id <= *last;
                            *last = (*last).max(call_id);
                            again
                        }
                        None => false,
                    };
                    if again {
                        // Sent again by a client that reattached after a broken connection
                        // and could not know this one arrived: it runs once.
                        log!("invocation {call_id} received again; ignored");
                    } else {
                        state.queue.push_back(invocation);
                        worker.work.notify_all();
                    }
                    None
                } else {
                    Some(not_attached())
                }
            }
            // Heard (above): that is all it is for.
            ClientMessage::Ping => None,
            ClientMessage::Interrupt { call_id } => {
                worker.interrupt(call_id);
                None
            }
            ClientMessage::Window { call_id, window } => {
                if worker.lock().attached_conn == Some(conn_id) {
                    let window = usize::try_from(window)
                        .unwrap_or(usize::MAX)
                        .max(MIN_WINDOW);
                    worker.outbox.set_window(call_id, window);
                }
                None
            }
            ClientMessage::Ack(ack) => {
                // Only the attached client's acknowledgements count: a client that has
                // disconnected must not take output away from the next one.
                if worker.lock().attached_conn == Some(conn_id) {
                    worker.outbox.ack(ack);
                }
                None
            }
            ClientMessage::ListSessions => Some(HostMessage::Sessions(vec![worker.info()])),
            ClientMessage::RemoveSession { instance_id } if instance_id == worker.id => {
                let _ = writer.send(&HostMessage::Removed { instance_id });
                worker.terminate("it was removed (remove-session)");
            }
            ClientMessage::RemoveSession { .. } => Some(HostMessage::Error(RemoteError::new(
                ErrorKind::NotFound,
                "this worker serves another session",
            ))),
            ClientMessage::Hello(_)
            | ClientMessage::CreateSession(_)
            | ClientMessage::EndReason { .. } => Some(HostMessage::Error(RemoteError::new(
                ErrorKind::BadRequest,
                "not a request a session worker answers",
            ))),
        };
        if let Some(reply) = reply
            && writer.send(&reply).is_err()
        {
            break;
        }
    }
    closed.store(true, Ordering::SeqCst);
    writer.shutdown();
    worker.outbox.wake();
    let mut state = worker.lock();
    if state.attached_conn == Some(conn_id) {
        detach(worker, &mut state);
        log!("client connection {conn_id} closed; session disconnected");
    }
}

/// Leaves the session with nobody attached; the idle timeout counts from now.
pub(super) fn detach(worker: &Worker, state: &mut State) {
    worker.outbox.detach();
    state.attached_conn = None;
    state.attached_link = None;
    state.info.attached = false;
    state.info.attached_client = None;
    state.info.disconnected_on = Some(Utc::now());
    state.idle_since = Some(Instant::now());
}

/// The attached client leaves on purpose, maybe with new settings; the session runs on.
fn disconnect(
    worker: &Worker,
    conn_id: u64,
    idle_timeout: Option<Duration>,
    output_buffering: Option<OutputBuffering>,
    closed: &AtomicBool,
) -> Option<HostMessage> {
    let mut state = worker.lock();
    if state.attached_conn != Some(conn_id) {
        return Some(not_attached());
    }
    if let Some(timeout) = idle_timeout {
        if let Err(error) = state.config.check_idle_timeout(timeout) {
            return Some(HostMessage::Error(error));
        }
        state.info.idle_timeout = timeout;
    }
    if let Some(mode) = output_buffering {
        state.info.output_buffering = mode;
        worker.outbox.set_mode(mode);
    }
    detach(worker, &mut state);
    // Stop sending output on this connection: it stays on the host until someone receives it.
    closed.store(true, Ordering::SeqCst);
    worker.outbox.wake();
    let mut info = state.info.clone();
    info.running = worker.running_call.load(Ordering::SeqCst) != 0;
    log!("client disconnected on purpose");
    Some(HostMessage::Disconnected(info))
}

fn not_attached() -> HostMessage {
    HostMessage::Error(RemoteError::new(
        ErrorKind::BadRequest,
        "attach to the session before running code in it",
    ))
}

struct AttachRequest {
    conn_id: u64,
    instance_id: Uuid,
    client: Option<Uuid>,
    resume: Vec<Received>,
    window: u64,
}

fn attach(
    worker: &Arc<Worker>,
    request: AttachRequest,
    writer: &Writer,
    closed: &Arc<AtomicBool>,
) -> Option<HostMessage> {
    let AttachRequest {
        conn_id,
        instance_id,
        client,
        resume,
        window,
    } = request;
    if instance_id != worker.id {
        return Some(HostMessage::Error(RemoteError::new(
            ErrorKind::NotFound,
            format!("no session {instance_id} here"),
        )));
    }
    let (attachment, generation) = {
        let mut state = worker.lock();
        match state.attached_conn {
            Some(other) if other != conn_id => {
                let same_client = client.is_some() && state.info.attached_client == client;
                if !same_client {
                    return Some(HostMessage::Error(
                        RemoteError::new(
                            ErrorKind::Busy,
                            "the session is connected to another client",
                        )
                        .with_help(
                            "disconnect it there first (disconnect-session), or wait until that client exits",
                        ),
                    ));
                }
                // The same client again, on a new connection: its old one broke.
                if let Some((old_writer, old_closed)) = state.attached_link.take() {
                    old_closed.store(true, Ordering::SeqCst);
                    old_writer.shutdown();
                }
                log!("client reattached on connection {conn_id}, replacing {other}");
            }
            Some(_) => {
                return Some(HostMessage::Error(RemoteError::new(
                    ErrorKind::BadRequest,
                    "this connection is attached already",
                )));
            }
            None => {}
        }
        // The window is the client's to choose, within reason: never so small that nothing
        // but one event at a time could go.
        let window = usize::try_from(window)
            .unwrap_or(usize::MAX)
            .max(MIN_WINDOW);
        let generation = worker.outbox.attach(&resume, window);
        state.attached_conn = Some(conn_id);
        state.attached_link = Some((writer.clone(), closed.clone()));
        state.info.attached = true;
        state.info.attached_client = client;
        state.idle_since = None;
        state.heard = Instant::now();
        let running = worker.running_call.load(Ordering::SeqCst);
        let mut info = state.info.clone();
        info.running = running != 0;
        let attachment = Attachment {
            info,
            pending_calls: (running != 0)
                .then_some(running)
                .into_iter()
                .chain(state.queue.iter().map(|i| i.call_id))
                .collect(),
            kept: worker.outbox.kept(),
            last_call_from_client: client.and_then(|c| state.last_call.get(&c).copied()),
            heartbeat: state.config.client_heartbeat,
        };
        (attachment, generation)
    };
    if writer.send(&HostMessage::Attached(attachment)).is_err() {
        return None;
    }
    let worker = worker.clone();
    let writer = writer.clone();
    let closed = closed.clone();
    let _ = std::thread::Builder::new()
        .name("send".into())
        .spawn(move || send_output(&worker, &writer, &closed, generation));
    None
}
