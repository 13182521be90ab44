//! A byte stream result (an external command's stdout, a file) returned as a `ByteStream`, so
//! that `describe`, `lines`, `save` and `bytes length` behave as they do locally and a large
//! output streams through in bounded memory.
//!
//! Nushell's plugin protocol cannot carry an error inside a byte stream (it arrives as a bare
//! I/O error, its message lost). So the result is held back for a moment ([`SETTLE`], or until
//! [`SETTLE_BYTES`] arrived): a command that fails by then — most do, at once — is the call's
//! error, as it would be locally. One that fails later, mid-stream, says why on stderr and ends
//! its stream with an error, so a pipeline or `try` still sees a failure.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use nu_plugin::EngineInterface;
use nu_protocol::{ByteStream, LabeledError, PipelineData};
use nu_session_client::BytesKind;

use super::output::OutputSink;
use super::{FOREVER, Piece, Run};

/// How long a byte stream result waits for its command to end before it streams.
const SETTLE: Duration = Duration::from_millis(100);

/// How much it holds at most while it waits.
const SETTLE_BYTES: usize = 1024 * 1024;

/// The result of `run`, whose `Started` said it is a byte stream of `kind`.
pub(super) fn result(
    mut run: Run,
    output: OutputSink,
    engine: &EngineInterface,
    kind: BytesKind,
) -> Result<PipelineData, LabeledError> {
    let head = run.head;
    let mut held = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while held.len() < SETTLE_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match run.next_piece(&output, left)? {
            Piece::Bytes(bytes) => held.extend_from_slice(&bytes),
            Piece::End | Piece::Waiting => break,
        }
    }
    let reader = Bytes {
        run,
        output,
        held,
        at: 0,
    };
    Ok(PipelineData::byte_stream(
        ByteStream::read(reader, head, engine.signals().clone(), kind.into()),
        None,
    ))
}

/// The stream's bytes, as they arrive.
struct Bytes {
    run: Run,
    output: OutputSink,
    held: Vec<u8>,
    at: usize,
}

impl Bytes {
    /// Refills `held`; `false` at the end.
    fn fill(&mut self) -> io::Result<bool> {
        self.held.clear();
        self.at = 0;
        loop {
            match self.run.next_piece(&self.output, FOREVER) {
                Ok(Piece::Bytes(bytes)) => {
                    self.held = bytes;
                    return Ok(true);
                }
                Ok(Piece::End) => return Ok(false),
                Ok(Piece::Waiting) => {}
                Err(error) => return Err(self.failed(error)),
            }
        }
    }

    /// Says why on stderr, and the stream's error (see the module's notes).
    fn failed(&self, error: LabeledError) -> io::Error {
        let labels: Vec<&str> = error.labels.iter().map(|l| l.text.as_str()).collect();
        let detail = if labels.is_empty() {
            String::new()
        } else {
            format!(" ({})", labels.join("; "))
        };
        self.output
            .write(true, format!("Error: {}{detail}\n", error.msg).as_bytes());
        io::Error::new(io::ErrorKind::InvalidData, error.msg)
    }
}

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.held.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.held.len() - self.at);
        buf[..n].copy_from_slice(&self.held[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
