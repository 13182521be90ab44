//! A session's worker: one process per session, the leader of its own process group, holding the
//! session's Nushell engine and serving its socket.
//!
//! Threads: the accept loop (this one), one per connection (reading requests), one writer for the
//! attached connection (sending output), the evaluation thread (one invocation at a time, in
//! order), the idle timer, and the stdout/stderr forwarders.

mod engine;
mod outbox;
mod output;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    Attachment, ClientMessage, ErrorKind, EventBody, Hello, HostMessage, Invocation,
    OutputBuffering, RemoteError, SessionInfo, SessionSettings,
};
use uuid::Uuid;

use crate::config::HostConfig;
use crate::conn::{Conn, Writer};
use crate::log;
use crate::records::{self, SessionFile};
use engine::Engine;
use outbox::Outbox;
use output::OutputCapture;

struct Worker {
    id: Uuid,
    layout: Layout,
    state: Mutex<State>,
    work: Condvar,
    outbox: Arc<Outbox>,
    interrupt: Arc<AtomicBool>,
    /// The invocation running now (0: none). Changed only under the state lock, so a request
    /// is always either queued or running; read without it to attribute printed output.
    running_call: Arc<AtomicU64>,
    next_conn: AtomicU64,
}

struct State {
    info: SessionInfo,
    attached_conn: Option<u64>,
    /// The attached connection's writer and stop flag, so that a reattaching client can take
    /// over from its own broken connection.
    attached_link: Option<(Writer, Arc<AtomicBool>)>,
    /// The highest invocation id each client has sent.
    last_call: std::collections::HashMap<Uuid, u64>,
    config: HostConfig,
    /// Since when nobody is attached (the idle timeout counts from here).
    idle_since: Option<Instant>,
    queue: VecDeque<Invocation>,
}

impl Worker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> SessionInfo {
        let mut info = self.lock().info.clone();
        info.running = self.running_call.load(Ordering::SeqCst) != 0;
        info
    }

    /// Deletes the session: its files, then its whole process group, this process included
    /// (through the exit hook).
    fn terminate(&self, why: &str) -> ! {
        log!("terminating session {}: {why}", self.id);
        records::record_end(&self.layout, self.id, why);
        std::process::exit(0)
    }

    fn interrupt(&self, call_id: u64) {
        let mut state = self.lock();
        if self.running_call.load(Ordering::SeqCst) == call_id {
            drop(state);
            self.interrupt.store(true, Ordering::SeqCst);
            // External commands stop on SIGINT as they would at a terminal; our own handler
            // only sets the flag above.
            // SAFETY: signalling our own process group.
            unsafe { libc::kill(0, libc::SIGINT) };
        } else if let Some(pos) = state.queue.iter().position(|i| i.call_id == call_id) {
            state.queue.remove(pos);
            drop(state);
            self.outbox.push(EventBody::Finished {
                call_id,
                error: Some(RemoteError::new(
                    ErrorKind::Interrupted,
                    "Operation interrupted",
                )),
            });
        }
    }
}

/// Files to delete if the process exits on its own (`exit` in the session's code).
static FILES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

extern "C" fn end_session_at_exit() {
    for path in FILES.get().into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    // SAFETY: signalling our own process group: what the session started ends with it.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// Runs a worker; never returns. Writes the session's [`SessionInfo`] as one JSON line to stdout
/// once it accepts connections.
pub fn run(layout: Layout, id: Uuid, settings: SessionSettings) -> io::Result<()> {
    crate::conn::init_log();
    let config = HostConfig::load().map_err(io::Error::other)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGINT, interrupt.clone())?;
    let home = home_dir();
    let mut engine = Engine::new(&home, interrupt.clone())
        .map_err(|e| io::Error::other(format!("cannot start the Nushell engine: {e}")))?;

    let socket = layout.session_socket(id);
    let _ = FILES.set(records::live_files(&layout, id).to_vec());
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(end_session_at_exit) };
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let info = SessionInfo {
        instance_id: id,
        name: settings.name,
        configuration_name: settings.configuration_name,
        user: crate::current_user(),
        created: Utc::now(),
        idle_timeout: settings.idle_timeout,
        output_buffering: settings.output_buffering,
        attached: false,
        attached_client: None,
        running: false,
        disconnected_on: None,
    };
    SessionFile::new(info.clone()).write(&layout)?;

    let outbox = Arc::new(Outbox::new(
        config.output_buffer_bytes,
        settings.output_buffering,
    ));
    let worker = Arc::new(Worker {
        id,
        layout: layout.clone(),
        state: Mutex::new(State {
            info: info.clone(),
            attached_conn: None,
            attached_link: None,
            last_call: Default::default(),
            config,
            idle_since: Some(Instant::now()),
            queue: VecDeque::new(),
        }),
        work: Condvar::new(),
        outbox: outbox.clone(),
        interrupt,
        running_call: Arc::new(AtomicU64::new(0)),
        next_conn: AtomicU64::new(1),
    });

    // Tell the manager we are ready, then let fds 1 and 2 become the session's output.
    let mut ready = serde_json::to_vec(&info).map_err(io::Error::other)?;
    ready.push(b'\n');
    io::stdout().write_all(&ready)?;
    io::stdout().flush()?;
    let capture = OutputCapture::start(outbox, worker.running_call.clone())?;

    {
        let worker = worker.clone();
        std::thread::Builder::new()
            .name("idle-timer".into())
            .spawn(move || idle_timer(&worker))?;
    }
    {
        let worker = worker.clone();
        std::thread::Builder::new()
            .name("eval".into())
            .spawn(move || evaluate(&worker, &mut engine, &capture))?;
    }
    log!("session {id} ready");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let worker = worker.clone();
                let _ = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve(&worker, stream));
            }
            Err(e) => log!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn idle_timer(worker: &Worker) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let expired = {
            let state = worker.lock();
            state
                .idle_since
                .filter(|since| since.elapsed() >= state.info.idle_timeout)
                .map(|_| state.info.idle_timeout)
        };
        if let Some(timeout) = expired {
            worker.terminate(&format!(
                "its idle timeout ({}) expired with no client attached",
                crate::config::human(timeout)
            ));
        }
    }
}

fn evaluate(worker: &Worker, engine: &mut Engine, capture: &OutputCapture) {
    loop {
        let invocation = {
            let mut state = worker.lock();
            loop {
                if let Some(invocation) = state.queue.pop_front() {
                    worker
                        .running_call
                        .store(invocation.call_id, Ordering::SeqCst);
                    break invocation;
                }
                state = worker.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        worker.interrupt.store(false, Ordering::SeqCst);
        let call_id = invocation.call_id;
        let mut last_drain: Option<Instant> = None;
        let mut emit = |event: EventBody| {
            // Output printed before a value or the end reaches the client before it. Checking
            // costs system calls, so within a fast stream it is done every few milliseconds.
            let due = match &event {
                EventBody::Started { .. } => false,
                EventBody::Finished { .. } => true,
                _ => last_drain.is_none_or(|at| at.elapsed() >= Duration::from_millis(5)),
            };
            if due {
                capture.drain();
                last_drain = Some(Instant::now());
            }
            worker.outbox.push(event);
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.run(invocation, &mut emit)
        }));
        if let Ok(Some(code)) = outcome {
            // Give the client a moment to receive the news before the session goes.
            worker.outbox.wait_acknowledged(Duration::from_secs(2));
            worker.terminate(&format!("its code called `exit {code}`"));
        }
        if outcome.is_err() {
            emit(EventBody::Finished {
                call_id,
                error: Some(RemoteError::new(
                    ErrorKind::Failed,
                    "the session's engine panicked while running this code",
                )),
            });
        }
        let _state = worker.lock();
        worker.running_call.store(0, Ordering::SeqCst);
    }
}

/// Serves one connection until it closes.
fn serve(worker: &Arc<Worker>, stream: UnixStream) {
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
        let reply = match message {
            ClientMessage::Attach {
                instance_id,
                resume_after,
                client,
            } => {
                let request = AttachRequest {
                    conn_id,
                    instance_id,
                    resume_after,
                    client,
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
            ClientMessage::Interrupt { call_id } => {
                worker.interrupt(call_id);
                None
            }
            ClientMessage::Ack { seq } => {
                // Only the attached client's acknowledgements count: a client that has
                // disconnected must not take output away from the next one.
                if worker.lock().attached_conn == Some(conn_id) {
                    worker.outbox.ack(seq);
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
        detach(&mut state);
        log!("client connection {conn_id} closed; session disconnected");
    }
}

/// Leaves the session with nobody attached; the idle timeout counts from now.
fn detach(state: &mut State) {
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
    detach(&mut state);
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
    resume_after: Option<u64>,
    client: Option<Uuid>,
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
        resume_after,
        client,
    } = request;
    if instance_id != worker.id {
        return Some(HostMessage::Error(RemoteError::new(
            ErrorKind::NotFound,
            format!("no session {instance_id} here"),
        )));
    }
    let attachment = {
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
        state.attached_conn = Some(conn_id);
        state.attached_link = Some((writer.clone(), closed.clone()));
        state.info.attached = true;
        state.info.attached_client = client;
        state.idle_since = None;
        let running = worker.running_call.load(Ordering::SeqCst);
        let mut info = state.info.clone();
        info.running = running != 0;
        Attachment {
            info,
            next_seq: worker.outbox.next_seq(),
            acked: worker.outbox.acked(),
            pending_calls: (running != 0)
                .then_some(running)
                .into_iter()
                .chain(state.queue.iter().map(|i| i.call_id))
                .collect(),
            last_call_from_client: client.and_then(|c| state.last_call.get(&c).copied()),
        }
    };
    worker.outbox.wake();
    if writer.send(&HostMessage::Attached(attachment)).is_err() {
        return None;
    }
    let worker = worker.clone();
    let writer = writer.clone();
    let closed = closed.clone();
    let _ = std::thread::Builder::new()
        .name("send".into())
        .spawn(move || send_output(&worker, &writer, &closed, resume_after.unwrap_or(0)));
    None
}

/// Streams the session's output to the attached client, from just after `sent`.
fn send_output(worker: &Worker, writer: &Writer, closed: &AtomicBool, mut sent: u64) {
    while !closed.load(Ordering::SeqCst) {
        let batch = worker.outbox.next_batch(sent, Duration::from_millis(500));
        if closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(last) = batch.last() else { continue };
        let last = last.seq;
        let dropped = worker.outbox.take_dropped();
        if dropped > 0
            && writer
                .send(&HostMessage::Dropped { count: dropped })
                .is_err()
        {
            writer.shutdown();
            return;
        }
        if writer.send(&HostMessage::Events(batch)).is_err() {
            writer.shutdown();
            return;
        }
        sent = last;
    }
}
