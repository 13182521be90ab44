//! Where a session's printed output goes: stderr, or stdout when stdout is the terminal (not the
//! plugin protocol).

use std::io::Write;

use nu_plugin::EngineInterface;

#[derive(Clone, Copy)]
pub struct OutputSink {
    stdout_ok: bool,
}

impl OutputSink {
    pub fn new(engine: &EngineInterface) -> Self {
        OutputSink {
            stdout_ok: !engine.is_using_stdio(),
        }
    }

    /// Says that the host discarded older output (output buffering `Drop`).
    pub fn dropped(&self, count: u64) {
        self.write(
            true,
            format!(
                "warning: the session's output buffer was full: {count} older outputs were dropped (output buffering Drop)\n"
            )
            .as_bytes(),
        );
    }

    pub fn write(&self, stderr: bool, bytes: &[u8]) {
        if stderr || !self.stdout_ok {
            let _ = std::io::stderr().write_all(bytes);
        } else {
            let mut out = std::io::stdout();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
    }
}
