//! `nu-session-host`: the host side of nu-session.
//!
//! ```text
//! nu-session-host manager [--daemon] [--dir D]   run the per-user manager (detached with --daemon)
//! nu-session-host connect [--dir D] [--session ID]   relay stdin/stdout to the manager or a session
//! nu-session-host worker --dir D --id ID    (started by the manager; its settings, JSON, on stdin)
//! nu-session-host --version
//! ```
//! `D` is the base runtime directory (`$NU_SESSION_DIR`, else `/tmp/nu-session-<uid>`); this
//! program's protocol version has its own directory in it (see `nu_session_protocol::layout`).

use std::process::ExitCode;

use nu_session_host::{manager, worker};
use nu_session_protocol::layout::Layout;

const USAGE: &str = "usage: nu-session-host manager [--daemon] [--dir DIR] | nu-session-host connect [--dir DIR] [--session ID] | nu-session-host --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("manager") => run_manager(&args[1..]),
        Some("connect") => run_connect(&args[1..]),
        Some("worker") => run_worker(&args[1..]),
        Some("--version") | Some("-V") => {
            println!("{}", nu_session_protocol::version_line());
            Ok(())
        }
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nu-session-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, USAGE)
}

fn run_manager(args: &[String]) -> std::io::Result<()> {
    let (mut layout, mut daemon) = (Layout::from_env(), false);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--daemon" => daemon = true,
            "--dir" => layout = Layout::under(args.next().ok_or_else(usage)?),
            _ => return Err(usage()),
        }
    }
    manager::run(layout, daemon)
}

fn run_connect(args: &[String]) -> std::io::Result<()> {
    let (mut layout, mut session) = (Layout::from_env(), None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match flag.as_str() {
            "--dir" => layout = Layout::under(value),
            "--session" => session = Some(value.parse().map_err(|_| usage())?),
            _ => return Err(usage()),
        }
    }
    nu_session_host::relay::connect(&layout, session)
}

fn run_worker(args: &[String]) -> std::io::Result<()> {
    let (mut dir, mut id) = (None, None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match flag.as_str() {
            "--dir" => dir = Some(Layout::under(value)),
            "--id" => id = Some(value.parse().map_err(|_| usage())?),
            _ => return Err(usage()),
        }
    }
    let (Some(dir), Some(id)) = (dir, id) else {
        return Err(usage());
    };
    // The settings come on stdin (argv is visible to every user in `ps`); then stdin is
    // /dev/null, as the session's commands expect.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let settings = serde_json::from_str(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: both descriptors are open; replacing fd 0 is what we mean.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    worker::run(dir, id, settings)
}
