//! The manager: one per user and host, on `manager.sock`. It creates sessions (spawning a worker
//! per session), lists them and removes them. It keeps no state of its own: the sessions
//! directory is the truth, so a restarted manager finds every running session again.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nu_session_protocol::layout::Layout;

use crate::conn::LOG_LIMIT;
use nu_session_protocol::{
    ClientMessage, ErrorKind, Hello, HostMessage, RemoteError, SessionInfo, SessionSettings,
    read_frame, write_frame,
};
use uuid::Uuid;

use crate::conn::Conn;
use crate::log;
use crate::records::{self, record_end, record_end_once, worker_pid};

/// How long a manager with no sessions and no clients stays before exiting.
const LINGER: Duration = Duration::from_secs(60);

struct Manager {
    layout: Layout,
    clients: AtomicUsize,
}

/// Runs the manager until it has been idle for a while. With `daemon`, detaches first (the
/// calling process returns at once and the manager lives on in a new session).
pub fn run(layout: Layout, daemon: bool) -> io::Result<()> {
    layout.ensure_private()?;
    if daemon {
        daemonize(&layout)?;
    }
    crate::conn::init_log(daemon.then(|| layout.manager_log()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.manager_lock())?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // Another manager serves this directory.
        return Ok(());
    }
    std::fs::write(layout.manager_pid(), std::process::id().to_string())?;
    let socket = layout.manager_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    log!("manager listening on {}", socket.display());
    // Managers exit when idle and start on demand: pruning at start is often enough.
    records::prune_end_records(&layout);
    let manager = Arc::new(Manager {
        layout,
        clients: AtomicUsize::new(0),
    });
    {
        let manager = manager.clone();
        std::thread::spawn(move || linger(&manager, lock));
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let manager = manager.clone();
                manager.clients.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().name("client".into()).spawn({
                    let manager = manager.clone();
                    move || {
                        serve(&manager, stream);
                        manager.clients.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                // No thread (out of memory or threads): the connection closes, the manager goes on.
                if let Err(e) = spawned {
                    manager.clients.fetch_sub(1, Ordering::SeqCst);
                    log!("cannot serve a connection: {e}");
                }
            }
            Err(e) => crate::conn::accept_failed(&e),
        }
    }
    Ok(())
}

/// Moves a `manager.log` over [`LOG_LIMIT`] aside, so the log never holds more than two of them.
fn rotate_log(layout: &Layout) {
    let log = layout.manager_log();
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_LIMIT) {
        let _ = std::fs::rename(&log, crate::conn::rotated(&log));
    }
}

fn daemonize(layout: &Layout) -> io::Result<()> {
    rotate_log(layout);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.manager_log())?;
    let null = File::open("/dev/null")?;
    // SAFETY: called before any thread is started; the child continues single-threaded.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: plain system calls on descriptors we own.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

/// Exits once there have been no sessions and no clients for [`LINGER`], or when the runtime
/// directory is gone.
fn linger(manager: &Manager, _lock: File) {
    let mut idle_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if !manager.layout.manager_socket().exists() {
            log!("socket removed; exiting");
            std::process::exit(0);
        }
        let busy =
            manager.clients.load(Ordering::SeqCst) > 0 || !records::ids(&manager.layout).is_empty();
        if busy {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= LINGER {
            log!("idle; exiting");
            let _ = std::fs::remove_file(manager.layout.manager_socket());
            std::process::exit(0);
        }
    }
}

fn serve(manager: &Manager, stream: UnixStream) {
    let hello = Hello {
        notices: crate::notices::for_this_user(&manager.layout),
        ..Hello::host(manager.layout.root())
    };
    let mut conn = match Conn::accept(stream, &hello) {
        Ok(Some(conn)) => conn,
        _ => return,
    };
    loop {
        let request = match conn.recv() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                log!("client: {e}");
                return;
            }
        };
        let reply = match request {
            ClientMessage::CreateSession(settings) => match check_settings(&settings) {
                Err(error) => HostMessage::Error(error),
                Ok(()) => match create(manager, settings) {
                    Ok(info) => HostMessage::Created(info),
                    Err(e) => HostMessage::Error(
                        RemoteError::new(ErrorKind::Failed, format!("cannot start a session: {e}"))
                            .with_help("see the manager's log in the runtime directory"),
                    ),
                },
            },
            ClientMessage::ListSessions => HostMessage::Sessions(list(&manager.layout)),
            ClientMessage::RemoveSession { instance_id } => remove(&manager.layout, instance_id),
            ClientMessage::EndReason { instance_id } => HostMessage::EndReason {
                instance_id,
                reason: records::end_reason(&manager.layout, instance_id),
            },
            _ => HostMessage::Error(RemoteError::new(
                ErrorKind::BadRequest,
                "not a request the manager answers",
            )),
        };
        if conn.writer.send(&reply).is_err() {
            return;
        }
    }
}

/// The host's limits apply to what clients ask for.
fn check_settings(settings: &SessionSettings) -> Result<(), RemoteError> {
    let config =
        crate::config::HostConfig::load().map_err(|e| RemoteError::new(ErrorKind::Failed, e))?;
    config.check_idle_timeout(settings.idle_timeout)
}

fn create(manager: &Manager, settings: SessionSettings) -> io::Result<SessionInfo> {
    let id = Uuid::new_v4();
    let layout = &manager.layout;
    let log = File::create(layout.session_log(id))?;
    let settings_json = serde_json::to_string(&settings).map_err(io::Error::other)?;
    let mut command = Command::new(own_program()?);
    command
        .arg0("nu-session-host")
        .arg("worker")
        .arg("--dir")
        .arg(layout.base())
        .arg("--id")
        .arg(id.to_string())
        // The settings go on stdin, not in argv: other users see argv in `ps`.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the worker leads its own session and process group,
    // so removing it can kill everything it started.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A worker that died at once leaves a closed pipe: its start-up line says why below.
        let _ = writeln!(stdin, "{settings_json}");
    }
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // Reap the worker whenever it ends; if it did not delete the session itself, it crashed.
    {
        let layout = layout.clone();
        std::thread::spawn(move || {
            // Learn how it ended without reaping it: until the reason is recorded, the zombie
            // counts as alive and nobody else records a vaguer one.
            let ended = ended_how(pid);
            if records::exists(&layout, id) {
                let why = crash_reason(ended, &layout, id);
                log!("session {id} ended: {why}");
                record_end(&layout, id, &why);
            }
            let _ = child.wait();
            if records::exists(&layout, id) {
                clean_up(&layout, id);
            }
        });
    }
    if line.is_empty() {
        let log = std::fs::read_to_string(layout.session_log(id)).unwrap_or_default();
        let _ = std::fs::remove_file(layout.session_log(id));
        return Err(io::Error::other(format!(
            "the worker exited during start-up: {}",
            log.trim()
        )));
    }
    serde_json::from_str(&line).map_err(io::Error::other)
}

/// The program this manager runs: workers are started from it, whatever happened on disk since
/// (an upgrade replaces the file; `/proc/self/exe` still opens the one that runs).
fn own_program() -> io::Result<std::path::PathBuf> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
}

/// Asks one worker a question on a fresh connection.
fn ask_worker(layout: &Layout, id: Uuid, request: &ClientMessage) -> io::Result<HostMessage> {
    let stream = UnixStream::connect(layout.session_socket(id))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    write_frame(&mut writer, &ClientMessage::Hello(Hello::current()))?;
    match read_frame::<HostMessage>(&mut reader)? {
        Some(HostMessage::Hello(_)) => {}
        Some(HostMessage::Error(e)) => return Err(io::Error::other(e.msg)),
        _ => return Err(io::Error::other("unexpected answer to hello")),
    }
    write_frame(&mut writer, request)?;
    read_frame::<HostMessage>(&mut reader)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
}

/// Removes what a dead worker left behind.
fn clean_up(layout: &Layout, id: Uuid) {
    // The worker leads its process group; anything it started dies with the session.
    if let Some(pid) = worker_pid(layout, id) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    records::remove(layout, id);
}

fn list(layout: &Layout) -> Vec<SessionInfo> {
    let mut sessions = Vec::new();
    for id in records::ids(layout) {
        match ask_worker(layout, id, &ClientMessage::ListSessions) {
            Ok(HostMessage::Sessions(mut infos)) => sessions.append(&mut infos),
            Ok(_) => {}
            Err(e) if is_gone(&e) && !worker_alive(layout, id) => {
                log!("session {id} is gone; cleaning up");
                record_end_once(
                    layout,
                    id,
                    "its worker process ended while no session manager was watching it",
                );
                clean_up(layout, id);
            }
            // It exists but did not answer in time (frozen, swapping, overloaded): as its file
            // last described it, never left out (clients would take it for gone).
            Err(e) => {
                log!("session {id} did not answer ({e}); listed from its file");
                if let Some(file) = records::SessionFile::read(layout, id) {
                    sessions.push(file.info);
                }
            }
        }
    }
    sessions.sort_by_key(|s| s.created);
    sessions
}

/// How a process ended: `Ok(code)` for an exit, `Err(signal)` for a signal. Waits for it
/// without reaping it.
fn ended_how(pid: u32) -> Option<Result<i32, i32>> {
    // SAFETY: siginfo_t is plain data; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, into a valid siginfo_t.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
    // SAFETY: filled in by a successful waitid for an exited child.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => Some(Ok(status)),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some(Err(status)),
        _ => None,
    }
}

/// What a worker's end says about why, with the last line it logged when it exited by itself.
fn crash_reason(ended: Option<Result<i32, i32>>, layout: &Layout, id: Uuid) -> String {
    let how = match ended {
        Some(Err(signal)) => {
            format!("was killed by signal {signal} ({})", signal_name(signal))
        }
        Some(Ok(code)) => format!("exited with status {code}"),
        None => "ended".to_string(),
    };
    let last = std::fs::read_to_string(layout.session_log(id))
        .ok()
        .and_then(|log| {
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        });
    match last {
        Some(line) if !matches!(ended, Some(Err(_))) => {
            format!(
                "its worker process {how}; its last log line: {}",
                line.trim()
            )
        }
        _ => format!("its worker process {how}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// Whether the session's worker process still exists (a zombie not reaped yet counts: its
/// reaper will record how it ended).
fn worker_alive(layout: &Layout, id: Uuid) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    worker_pid(layout, id).is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

fn remove(layout: &Layout, id: Uuid) -> HostMessage {
    let request = ClientMessage::RemoveSession { instance_id: id };
    match ask_worker(layout, id, &request) {
        Ok(reply) => reply,
        // The worker kills itself right after answering; a cut answer still means removed.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            HostMessage::Removed { instance_id: id }
        }
        Err(e) if is_gone(&e) => {
            let existed = records::exists(layout, id);
            clean_up(layout, id);
            if existed {
                HostMessage::Removed { instance_id: id }
            } else {
                HostMessage::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("no session {id} on this host"),
                ))
            }
        }
        Err(e) => HostMessage::Error(RemoteError::new(
            ErrorKind::Failed,
            format!("cannot reach session {id}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_its_limit_is_moved_aside_and_a_small_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path().to_path_buf());
        std::fs::create_dir_all(layout.root()).unwrap();
        let log = layout.manager_log();
        std::fs::write(&log, "small\n").unwrap();
        rotate_log(&layout);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "small\n");
        std::fs::write(&log, vec![b'x'; LOG_LIMIT as usize + 1]).unwrap();
        rotate_log(&layout);
        assert!(!log.exists());
        let old = log.with_extension("log.1");
        assert_eq!(std::fs::metadata(&old).unwrap().len(), LOG_LIMIT + 1);
    }
}
