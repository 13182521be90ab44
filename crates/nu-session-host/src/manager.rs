//! The manager: one per user and host, on `manager.sock`. It creates sessions (spawning a worker
//! per session), lists them and removes them. It keeps no state of its own: the sessions
//! directory is the truth, so a restarted manager finds every running session again.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    ClientMessage, ErrorKind, Hello, HostMessage, RemoteError, SessionInfo, SessionSettings,
    read_frame, write_frame,
};
use uuid::Uuid;

use crate::conn::Conn;
use crate::log;
use crate::worker::SessionFile;

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
    crate::conn::init_log();
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
    std::fs::write(
        layout.root().join("manager.pid"),
        std::process::id().to_string(),
    )?;
    let socket = layout.manager_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    log!("manager listening on {}", socket.display());
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
                std::thread::spawn(move || {
                    serve(&manager, stream);
                    manager.clients.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => log!("accept failed: {e}"),
        }
    }
    Ok(())
}

fn daemonize(layout: &Layout) -> io::Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.root().join("manager.log"))?;
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
        let busy = manager.clients.load(Ordering::SeqCst) > 0
            || !session_files(&manager.layout).is_empty();
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
    let mut conn = match Conn::accept(stream, manager.layout.root()) {
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
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("worker")
        .arg("--dir")
        .arg(layout.root())
        .arg("--id")
        .arg(id.to_string())
        .arg("--settings")
        .arg(settings_json)
        .stdin(Stdio::null())
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
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // Reap the worker whenever it ends.
    std::thread::spawn(move || child.wait());
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

fn session_files(layout: &Layout) -> Vec<Uuid> {
    let Ok(entries) = std::fs::read_dir(layout.sessions_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect()
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
    let pid = std::fs::read(layout.session_meta(id))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<SessionFile>(&bytes).ok())
        .map(|file| file.pid);
    // The worker leads its process group; anything it started dies with the session.
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    for path in [
        layout.session_socket(id),
        layout.session_meta(id),
        layout.session_log(id),
    ] {
        let _ = std::fs::remove_file(path);
    }
}

fn list(layout: &Layout) -> Vec<SessionInfo> {
    let mut sessions = Vec::new();
    for id in session_files(layout) {
        match ask_worker(layout, id, &ClientMessage::ListSessions) {
            Ok(HostMessage::Sessions(mut infos)) => sessions.append(&mut infos),
            Ok(_) => {}
            Err(e) if is_gone(&e) => {
                log!("session {id} is gone; cleaning up");
                clean_up(layout, id);
            }
            Err(e) => log!("session {id}: {e}"),
        }
    }
    sessions.sort_by_key(|s| s.created);
    sessions
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
            let existed = layout.session_meta(id).exists();
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
