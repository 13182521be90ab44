//! Byte streams: an invocation whose result is a byte stream (an external command's stdout, a
//! file) sends it chunk by chunk as the source produces it, so `^tail -f` shows its lines as
//! they come and a large output never sits whole in the worker's memory (the outbox bounds it
//! in bytes, as it does values).
//!
//! An external command's output loses its final newline, as it does when Nushell collects it
//! locally (`let host = ^hostname` has none): a newline at the end of a chunk is held back
//! until more output comes, the command ends (then it is dropped), or [`HOLD`] passes (then it
//! is sent: a line that waits is shown whole).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nu_protocol::process::ChildPipe;
use nu_protocol::shell_error::bridge::ShellErrorBridge;
use nu_protocol::shell_error::io::IoError;
use nu_protocol::{ByteStream, ByteStreamType, ShellError, Signals, Span};
use nu_session_protocol::EventBody;

use super::engine::Emit;

/// The most read at once; a pipe gives at most 64 KiB per read anyway.
const CHUNK: usize = 64 * 1024;

/// How long a final newline is held back waiting for the command to end or write more.
const HOLD: Duration = Duration::from_millis(50);

/// Sends the stream's bytes as [`EventBody::Bytes`], then checks an external command's exit
/// status (a failing command is the invocation's error, as it is locally).
pub fn forward(stream: ByteStream, call_id: u64, emit: &mut Emit<'_>) -> Result<(), ShellError> {
    let span = stream.span();
    let signals = stream.signals().clone();
    let trim = stream.type_() != ByteStreamType::Binary;
    match stream.into_child() {
        Ok(mut child) => {
            if let Some(stdout) = child.stdout.take() {
                let fd = match &stdout {
                    ChildPipe::Pipe(pipe) => Some(pipe.as_raw_fd()),
                    ChildPipe::Tee(_) => None,
                };
                let mut chunks = Chunks::new(stdout, fd.filter(|_| trim));
                send_all(&mut chunks, call_id, emit, &signals, span)?;
            }
            child.wait()
        }
        Err(stream) => {
            let Some(reader) = stream.reader() else {
                return Ok(());
            };
            let mut chunks = Chunks::new(reader, None);
            send_all(&mut chunks, call_id, emit, &signals, span)
        }
    }
}

fn send_all<R: Read>(
    chunks: &mut Chunks<R>,
    call_id: u64,
    emit: &mut Emit<'_>,
    signals: &Signals,
    span: Span,
) -> Result<(), ShellError> {
    loop {
        signals.check(&span)?;
        match chunks.next() {
            Ok(Some(bytes)) => emit(EventBody::Bytes { call_id, bytes })?,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(match ShellErrorBridge::try_from(e) {
                    Ok(ShellErrorBridge(e)) => e,
                    Err(e) => ShellError::Io(IoError::new(e, span, None)),
                });
            }
        }
    }
}

/// The source's bytes, in the pieces it writes them. With `fd` (an external command's pipe),
/// a final newline is held back as the module says.
struct Chunks<R> {
    reader: R,
    fd: Option<RawFd>,
    held: Vec<u8>,
    /// Read into, then copied out at the size read (a piece holds no more than it carries).
    buffer: Box<[u8]>,
}

impl<R> Chunks<R> {
    fn new(reader: R, fd: Option<RawFd>) -> Chunks<R> {
        Chunks {
            reader,
            fd,
            held: Vec::new(),
            buffer: vec![0; CHUNK].into_boxed_slice(),
        }
    }
}

impl<R: Read> Chunks<R> {
    /// The next piece (never empty), or `None` at the end.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if !self.held.is_empty()
                && let Some(fd) = self.fd
                && !readable(fd, HOLD)?
            {
                return Ok(Some(std::mem::take(&mut self.held)));
            }
            let n = self.reader.read(&mut self.buffer)?;
            if n == 0 {
                // The end: a held newline goes with it.
                return Ok(None);
            }
            let mut chunk = std::mem::take(&mut self.held);
            chunk.extend_from_slice(&self.buffer[..n]);
            if self.fd.is_some() && chunk.ends_with(b"\n") {
                let keep = if chunk.ends_with(b"\r\n") { 2 } else { 1 };
                self.held = chunk.split_off(chunk.len() - keep);
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }
}

/// Whether `fd` has bytes (or its end) to read within `wait`.
fn readable(fd: RawFd, wait: Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut poll, 1, wait.as_millis() as libc::c_int) };
    match n {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(input: &[&[u8]], fd: Option<RawFd>) -> Vec<Vec<u8>> {
        let data: Vec<u8> = input.concat();
        let mut chunks = Chunks::new(io::Cursor::new(data), fd);
        std::iter::from_fn(|| chunks.next().unwrap()).collect()
    }

    #[test]
    fn a_file_keeps_its_final_newline() {
        assert_eq!(pieces(&[b"a\nb\n"], None).concat(), b"a\nb\n");
    }

    #[test]
    fn an_external_loses_its_final_newline_and_only_that() {
        // A pipe that is always readable: held newlines go with the next read.
        let (read, write) = std::io::pipe().unwrap();
        drop(write);
        let fd = read.as_raw_fd();
        assert_eq!(pieces(&[b"a\r\nb\n\n"], Some(fd)).concat(), b"a\r\nb\n");
        assert_eq!(pieces(&[b"line\r\n"], Some(fd)).concat(), b"line");
        assert_eq!(pieces(&[b"no newline"], Some(fd)).concat(), b"no newline");
        assert!(pieces(&[b"\n"], Some(fd)).is_empty());
    }

    #[test]
    fn a_held_newline_is_sent_when_the_command_waits() {
        // Nothing more to read and the writer still open: the newline goes after HOLD.
        let (read, _write) = std::io::pipe().unwrap();
        let mut chunks = Chunks::new(io::Cursor::new(b"line\n".to_vec()), Some(read.as_raw_fd()));
        assert_eq!(chunks.next().unwrap().unwrap(), b"line");
        let started = std::time::Instant::now();
        assert_eq!(chunks.next().unwrap().unwrap(), b"\n");
        assert!(started.elapsed() >= HOLD);
        assert_eq!(chunks.next().unwrap(), None);
    }
}
