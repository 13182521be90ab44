//! A session's worker: one process per session, the leader of its own process group, holding the
//! session's Nushell engine and serving its socket.
//!
//! Threads: the accept loop (this one), one per connection (reading requests), one writer for the
//! attached connection (sending output), the evaluation thread (one invocation at a time, in
//! order), the idle timer, and the stdout/stderr forwarders.
//!
//! This module starts the worker and holds its state; [`serving`] has the connections'
//! requests, [`evaluation`] the invocations' thread, [`sending`] the output's, [`outbox`] the
//! numbered output kept until acknowledged, [`engine`] the Nushell engine, [`output`] what the
//! session prints.

mod bytes;
mod engine;
mod evaluation;
mod outbox;
mod output;
mod sending;
mod serving;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    ErrorKind, EventBody, Invocation, RemoteError, SessionInfo, SessionSettings,
};
use uuid::Uuid;

use crate::config::HostConfig;
use crate::conn::Writer;
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
    /// When the attached client was last heard from (any message).
    heard: Instant,
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
            // Under the lock: the running invocation cannot end and the next one start (and
            // be hit instead) before the flag and the signal are out.
            self.interrupt.store(true, Ordering::SeqCst);
            // External commands stop on SIGINT as they would at a terminal; our own handler
            // only sets the flag above.
            // SAFETY: signalling our own process group.
            unsafe { libc::kill(0, libc::SIGINT) };
        } else if let Some(pos) = state.queue.iter().position(|i| i.call_id == call_id) {
            state.queue.remove(pos);
            drop(state);
            // Small: always within the message limit.
            let _ = self.outbox.push(EventBody::Finished {
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
    crate::conn::init_log(Some(layout.session_log(id)));
    let config = HostConfig::load().map_err(io::Error::other)?;
    nu_session_protocol::set_max_message_len(config.max_message_bytes);
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
            heard: Instant::now(),
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
            .spawn(move || evaluation::evaluate(&worker, &mut engine, &capture))?;
    }
    log!("session {id} ready");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let worker = worker.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serving::serve(&worker, stream))
                {
                    log!("cannot serve a connection: {e}");
                }
            }
            Err(e) => crate::conn::accept_failed(&e),
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

/// Ends the session when nobody attached for its idle timeout; lets go of an attached client
/// that has been silent for three heartbeats (frozen, or gone without closing).
fn idle_timer(worker: &Worker) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        {
            let mut state = worker.lock();
            let silent_for = state.heard.elapsed();
            if state.attached_conn.is_some() && silent_for > state.config.client_heartbeat * 3 {
                log!(
                    "the attached client has been silent for {}s; letting go of it",
                    silent_for.as_secs()
                );
                if let Some((writer, closed)) = state.attached_link.take() {
                    closed.store(true, Ordering::SeqCst);
                    writer.shutdown();
                }
                serving::detach(worker, &mut state);
            }
        }
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
