//! Blocking framed connections over Unix sockets, as the host serves them: only the user's own
//! processes may connect, and every connection begins with a hello.

use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use nu_session_protocol::{
    ClientMessage, ErrorKind, Hello, HostMessage, PROTOCOL_VERSION, ProtocolError, RemoteError,
    read_frame, write_frame,
};

/// One accepted connection: a reader for this thread and a writer others may share.
pub struct Conn {
    pub reader: BufReader<UnixStream>,
    pub writer: Writer,
}

/// The sending side of a connection, shared: one frame at a time.
#[derive(Clone)]
pub struct Writer {
    stream: Arc<Mutex<BufWriter<UnixStream>>>,
    /// The same socket, outside the lock: a send may block for as long as the peer reads
    /// nothing (a frozen client, a stalled network), and shutting down must not wait for it.
    control: Arc<UnixStream>,
}

impl Writer {
    fn new(stream: &UnixStream) -> io::Result<Writer> {
        Ok(Writer {
            stream: Arc::new(Mutex::new(BufWriter::new(stream.try_clone()?))),
            control: Arc::new(stream.try_clone()?),
        })
    }

    pub fn send(&self, message: &HostMessage) -> Result<(), ProtocolError> {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *stream, message)
    }

    /// Writes a message framed already (a batch of events) and flushes.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), ProtocolError> {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.write_all(frame)?;
        stream.flush()?;
        Ok(())
    }

    /// Closes the connection at once, both ways: a send blocked on it fails, and its reader
    /// sees the end. Never waits (for a send in progress, or anything else).
    pub fn shutdown(&self) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }
}

impl Conn {
    /// Checks the peer and exchanges hellos, answering with `ours`. `Ok(None)`: the peer was
    /// refused and told why.
    pub fn accept(stream: UnixStream, ours: &Hello) -> io::Result<Option<Conn>> {
        if !peer_is_same_user(&stream) {
            return Ok(None);
        }
        let writer = Writer::new(&stream)?;
        let mut conn = Conn {
            reader: BufReader::new(stream),
            writer,
        };
        match conn.recv()? {
            Some(ClientMessage::Hello(hello)) if hello.protocol_version == PROTOCOL_VERSION => {
                conn.writer.send(&HostMessage::Hello(ours.clone()))?;
                Ok(Some(conn))
            }
            Some(ClientMessage::Hello(hello)) => {
                let error = RemoteError::new(
                    ErrorKind::Version,
                    format!(
                        "this nu-session-host {} speaks protocol {PROTOCOL_VERSION}, the client {} speaks protocol {}",
                        nu_session_protocol::SOFTWARE_VERSION,
                        hello.software_version,
                        hello.protocol_version
                    ),
                )
                .with_help("install the same version of nu-session on both sides");
                conn.writer.send(&HostMessage::Error(error))?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The next message; `Ok(None)` when the client has gone. A malformed frame is an error:
    /// the caller drops the connection.
    pub fn recv(&mut self) -> io::Result<Option<ClientMessage>> {
        match read_frame(&mut self.reader) {
            Ok(message) => Ok(message),
            Err(ProtocolError::Io(e)) => Err(e),
            Err(e) => {
                let _ = self.writer.send(&HostMessage::Error(RemoteError::new(
                    ErrorKind::BadRequest,
                    format!("closing the connection: {e}"),
                )));
                Err(e.into())
            }
        }
    }
}

/// Whether the process at the other end runs as this user (`SO_PEERCRED`).
fn peer_is_same_user(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    rc == 0 && cred.uid == unsafe { libc::geteuid() }
}

/// A log grows past this and it is moved aside (`<log>.1`, replacing the one before) and
/// started again: a host never holds more than two of each.
pub const LOG_LIMIT: u64 = 1024 * 1024;

/// Where a log is moved aside.
pub fn rotated(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    name.into()
}

/// This process's log: a copy of its stderr as started (before output capture), and the file
/// that is, when it is one.
pub struct Log {
    file: std::sync::Mutex<std::fs::File>,
    path: Option<std::path::PathBuf>,
}

/// Writes a line to this process's log; past [`LOG_LIMIT`], the log is moved aside and begun
/// again (a manager or worker that runs for months logs for months).
pub fn log(message: std::fmt::Arguments<'_>) {
    let Some(log) = LOG.get() else {
        return;
    };
    let mut file = log.file.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        file,
        "{} [{}] {message}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        std::process::id()
    );
    if let Some(path) = &log.path
        && file.metadata().is_ok_and(|m| m.len() > LOG_LIMIT)
    {
        rotate(&mut file, path);
    }
}

/// Moves the log at `path` (open as `file`) aside and opens a new one in its place; fd 2
/// follows when it was the same file (the manager's).
fn rotate(file: &mut std::fs::File, path: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let Ok(old) = file.metadata() else { return };
    // SAFETY: fd 2 is borrowed for a metadata call only.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let stderr_is_log = stderr
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| same(&m, &old));
    // Moved aside already (by another process of the host): only follow it to the new file.
    let still_ours = std::fs::metadata(path).is_ok_and(|m| same(&m, &old));
    if still_ours && std::fs::rename(path, rotated(path)).is_err() {
        return;
    }
    let Ok(new) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    else {
        // Nowhere new to write: the moved-aside file must not grow without bound instead.
        let _ = file.set_len(0);
        return;
    };
    if stderr_is_log {
        // SAFETY: both descriptors are open; pointing fd 2 at the new log is what we mean.
        unsafe { libc::dup2(new.as_raw_fd(), 2) };
    }
    *file = new;
}

pub static LOG: std::sync::OnceLock<Log> = std::sync::OnceLock::new();

/// Keeps a copy of the current stderr as the log, so later redirections of fd 2 don't hide it.
/// `path`: the file stderr is, to be moved aside when it grows too large.
pub fn init_log(path: Option<std::path::PathBuf>) {
    // SAFETY: dup of fd 2 returns a new descriptor or -1.
    let fd = unsafe { libc::dup(2) };
    if fd >= 0 {
        // SAFETY: fd is a fresh descriptor owned by nothing else; mark it close-on-exec.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: as above.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = LOG.set(Log {
            file: std::sync::Mutex::new(file),
            path,
        });
    }
}

#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::conn::log(format_args!($($arg)*)) };
}

/// What an accept loop does when `accept` fails: log it, and when the process is out of a
/// resource (file descriptors, memory) wait a moment before trying again — the pending
/// connection stays pending, and accepting again at once would fail again at once, spinning a
/// core and filling the log.
pub fn accept_failed(error: &io::Error) {
    let pause = accept_pause(error);
    log!(
        "accept failed: {error}{}",
        if pause.is_some() {
            " (waiting 100 ms)"
        } else {
            ""
        }
    );
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
}

fn accept_pause(error: &io::Error) -> Option<std::time::Duration> {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
    .then_some(std::time::Duration::from_millis(100))
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn out_of_descriptors_waits_and_a_failed_handshake_does_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                accept_pause(&io::Error::from_raw_os_error(errno)).is_some(),
                "{errno}"
            );
        }
        assert!(accept_pause(&io::Error::from_raw_os_error(libc::ECONNABORTED)).is_none());
        assert!(accept_pause(&io::Error::from(io::ErrorKind::Interrupted)).is_none());
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    fn open_log(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_log_past_its_limit_is_moved_aside_and_writing_goes_on_in_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.log");
        let mut file = open_log(&path);
        file.write_all(&vec![b'x'; LOG_LIMIT as usize + 1]).unwrap();
        rotate(&mut file, &path);
        writeln!(file, "after").unwrap();
        assert_eq!(
            std::fs::metadata(rotated(&path)).unwrap().len(),
            LOG_LIMIT + 1
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(rotated(&path), dir.path().join("manager.log.1"));
    }

    #[test]
    fn a_log_another_process_moved_aside_already_is_followed_not_moved_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.log");
        let mut file = open_log(&path);
        file.write_all(b"old\n").unwrap();
        // Another manager rotated it and started writing the new one.
        std::fs::rename(&path, rotated(&path)).unwrap();
        std::fs::write(&path, "theirs\n").unwrap();
        rotate(&mut file, &path);
        writeln!(file, "mine").unwrap();
        assert_eq!(std::fs::read_to_string(rotated(&path)).unwrap(), "old\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs\nmine\n");
    }
}
