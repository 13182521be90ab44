//! `nu-session-host connect`: a byte relay between this process's stdin/stdout and the manager's
//! (or one session's) socket, for clients that reach the host by running a command (`ssh host
//! nu-session-host connect`) rather than by opening the socket directly.
//!
//! Before relaying, it writes [`PREAMBLE`]: whatever a login shell printed before it ran can be
//! skipped by the client up to that marker.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nu_session_protocol::layout::Layout;
use uuid::Uuid;

/// Starts the line that says why the relay could not start, instead of the preamble.
pub use nu_session_protocol::RELAY_FAILED as FAILED;
/// Marks where the protocol starts on stdout.
pub use nu_session_protocol::RELAY_PREAMBLE as PREAMBLE;

/// The socket to relay to, after checking the runtime directory.
fn open(layout: &Layout, session: Option<Uuid>) -> io::Result<UnixStream> {
    layout.ensure_private()?;
    match session {
        Some(id) => UnixStream::connect(layout.session_socket(id))
            .map_err(|e| io::Error::new(e.kind(), format!("no session {id} on this host ({e})"))),
        None => connect_manager(layout),
    }
}

/// Relays until either side closes. Starts the manager when it is the target and not running.
pub fn connect(layout: &Layout, session: Option<Uuid>) -> io::Result<()> {
    let stream = match open(layout, session) {
        Ok(stream) => stream,
        Err(e) => {
            // The client reads stdout until the preamble (stderr may not reach it): why this
            // failed is said there too, on a line of its own.
            let mut stdout = io::stdout().lock();
            let _ = writeln!(stdout, "\n{FAILED}{e}");
            let _ = stdout.flush();
            return Err(e);
        }
    };
    let mut stdout = io::stdout().lock();
    stdout.write_all(PREAMBLE)?;
    stdout.flush()?;

    let mut to_socket = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_socket);
        let _ = to_socket.shutdown(std::net::Shutdown::Write);
    });
    let mut from_socket = stream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_socket.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn connect_manager(layout: &Layout) -> io::Result<UnixStream> {
    if let Ok(stream) = UnixStream::connect(layout.manager_socket()) {
        return Ok(stream);
    }
    let program = std::env::current_exe()?;
    let start = |mut command: std::process::Command| {
        command
            .args(["manager", "--daemon", "--dir"])
            .arg(layout.base())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
    };
    // Where logout would end it: in the user's own systemd instance, if that outlives the login.
    let escaped = crate::notices::escape_login_scope().is_some_and(|mut command| {
        command.arg(&program);
        start(command).is_ok_and(|status| status.success())
    });
    if !escaped {
        let status = start(std::process::Command::new(&program))?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "could not start the manager: {status}"
            )));
        }
    }
    let mut last = None;
    for _ in 0..500 {
        match UnixStream::connect(layout.manager_socket()) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(last.unwrap_or_else(|| io::Error::other("the manager did not start")))
}
