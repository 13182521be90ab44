//! Serving `nu`: what `nu_plugin::serve_plugin` does (the command line, the connection, the
//! encoding's name), with the plugin's own writer to `nu`.
//!
//! `nu-plugin` flushes after every message it writes, and a stream's items are messages of
//! their own: a million values returned as a stream made a million system calls here and as many
//! wake-ups in `nu`, which reads them. [`Lazy`] writes a stream's items (and the plugin's
//! acknowledgements of `nu`'s) together: a batch goes when it holds [`BATCH_ITEMS`] of them or
//! [`BATCH_BYTES`], and otherwise at most [`DELAY`] after the first, by a thread of its own;
//! everything else (responses, engine calls, a stream's end) goes at once. `nu-plugin` lets a
//! stream run at most a hundred items ahead of `nu`, so the delay never holds it back for long.
//!
//! `serve_plugin_io` is `nu-plugin`'s own loop, public but hidden from its docs; the plugin is
//! built against exactly `nu-plugin` 0.115.1.

use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nu_plugin::{Plugin, serve_plugin, serve_plugin_io};
use nu_plugin_core::{
    ClientCommunicationIo, CommunicationMode, Encoder, PluginEncoder, PluginWrite,
};
use nu_plugin_protocol::PluginOutput;
use nu_protocol::ShellError;
use nu_protocol::shell_error::io::IoError;

use crate::encoding::CompactMsgPack;

/// Items of streams written together at most.
const BATCH_ITEMS: usize = 32;
/// Bytes written together at most (besides what one message holds).
const BATCH_BYTES: usize = 128 * 1024;
/// The longest an item waits for others to go with it.
const DELAY: Duration = Duration::from_micros(100);

/// Serves `plugin` to the `nu` that started this process.
pub fn serve(plugin: &impl Plugin) {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mode = match args.as_slice() {
        [flag] if flag == "--stdio" => CommunicationMode::Stdio,
        [flag, name] if flag == "--local-socket" => CommunicationMode::LocalSocket(name.into()),
        // Help, or not started by nu: as `nu-plugin` says it.
        _ => return serve_plugin(plugin, CompactMsgPack),
    };
    let name = "session";
    let result = match mode.connect_as_client() {
        Ok(ClientCommunicationIo::Stdio(stdin, stdout)) => {
            let stdout = Lazy::start(stdout, true);
            stdout.tell_encoding();
            serve_plugin_io(
                plugin,
                name,
                move || (stdin.lock(), CompactMsgPack),
                move || stdout,
            )
        }
        Ok(ClientCommunicationIo::LocalSocket { read_in, write_out }) => {
            let out = Lazy::start(write_out, false);
            out.tell_encoding();
            serve_plugin_io(
                plugin,
                name,
                move || {
                    (
                        BufReader::with_capacity(BATCH_BYTES, read_in),
                        CompactMsgPack,
                    )
                },
                move || out,
            )
        }
        Err(error) => {
            eprintln!("nu_plugin_{name}: failed to connect: {error:?}");
            std::process::exit(1);
        }
    };
    if let Err(error) = result {
        eprintln!("Plugin `{name}` error: {error}");
        std::process::exit(1);
    }
}

/// The plugin's messages to `nu`, stream items written together (see the module's notes).
#[derive(Clone)]
pub struct Lazy<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    stdout: bool,
}

struct Shared<W: Write> {
    out: Mutex<Out<W>>,
    /// The flusher waits here for items to write.
    dirty: Condvar,
}

struct Out<W: Write> {
    writer: BufWriter<W>,
    /// Stream items written since the last flush; waiting for the flusher when `dirty`.
    items: usize,
    dirty: bool,
    /// Why the last write failed (`nu` is gone), for the next one to say.
    failed: Option<std::io::ErrorKind>,
}

impl<W: Write + Send + 'static> Lazy<W> {
    fn start(writer: W, stdout: bool) -> Lazy<W> {
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                writer: BufWriter::with_capacity(BATCH_BYTES * 2, writer),
                items: 0,
                dirty: false,
                failed: None,
            }),
            dirty: Condvar::new(),
        });
        let flusher = shared.clone();
        let _ = std::thread::Builder::new()
            .name("plugin writer".into())
            .spawn(move || flusher.flush_when_dirty());
        Lazy { shared, stdout }
    }

    /// Tells `nu` the encoding, as `nu-plugin` does: its name's length in a byte, then it.
    fn tell_encoding(&self) {
        let name = CompactMsgPack.name();
        let mut out = self.shared.lock();
        let _ = out.writer.write_all(&[name.len() as u8]);
        let _ = out.writer.write_all(name.as_bytes());
        let _ = out.writer.flush();
    }
}

impl<W: Write> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, Out<W>> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flusher: writes what waits, [`DELAY`] after it started waiting.
    fn flush_when_dirty(&self) {
        loop {
            {
                let mut out = self.lock();
                while !out.dirty {
                    out = self.dirty.wait(out).unwrap_or_else(|e| e.into_inner());
                }
            }
            std::thread::sleep(DELAY);
            let mut out = self.lock();
            if out.dirty {
                out.flush();
            }
        }
    }
}

impl<W: Write> Out<W> {
    fn flush(&mut self) {
        self.items = 0;
        self.dirty = false;
        if let Err(error) = self.writer.flush() {
            self.failed = Some(error.kind());
        }
    }
}

/// Whether a message may wait for others: a stream's items, and acknowledgements of `nu`'s.
fn may_wait(message: &PluginOutput) -> bool {
    matches!(message, PluginOutput::Data(..) | PluginOutput::Ack(..))
}

impl<W: Write + Send + 'static> PluginWrite<PluginOutput> for Lazy<W> {
    fn write(&self, message: &PluginOutput) -> Result<(), ShellError> {
        let mut out = self.shared.lock();
        if let Some(kind) = out.failed {
            return Err(ShellError::Io(IoError::new_internal(
                std::io::Error::from(kind),
                "cannot write to nu",
            )));
        }
        Encoder::<PluginOutput>::encode(&CompactMsgPack, message, &mut out.writer)?;
        if !may_wait(message) {
            out.flush();
        } else {
            out.items += 1;
            if out.items >= BATCH_ITEMS || out.writer.buffer().len() >= BATCH_BYTES {
                out.flush();
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ShellError> {
        // Called after every message: what may wait is written by the flusher.
        let mut out = self.shared.lock();
        if !out.writer.buffer().is_empty() && !out.dirty {
            out.dirty = true;
            self.shared.dirty.notify_one();
        }
        Ok(())
    }

    fn is_stdout(&self) -> bool {
        self.stdout
    }
}
