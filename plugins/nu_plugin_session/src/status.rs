//! One status line on stderr for work that takes a while: fan-outs ("new-session: 12/40 done")
//! and copies of the host program ("copying nu-session-host to web1: 23/71 MB"), side by side.
//!
//! Shown only when stderr is a terminal, and only for work still going after [`QUIET_FOR`]; the
//! line is rewritten in place and erased when the last piece of work ends.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Progress is shown only for work that has not finished after this long.
const QUIET_FOR: Duration = Duration::from_millis(500);
const REDRAW_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Line {
    /// Each piece of work's text, by when it started.
    parts: BTreeMap<u64, (Instant, String)>,
    /// Whether the line is on screen.
    shown: bool,
    /// The drawing thread runs.
    drawing: bool,
}

static LINE: Mutex<Option<Line>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A piece of work on the status line; its text goes when it is dropped.
pub struct Status {
    key: u64,
}

impl Status {
    /// Starts showing `text` (once it has been there for a moment), if stderr is a terminal.
    pub fn new(text: String) -> Status {
        let key = NEXT.fetch_add(1, Ordering::SeqCst);
        if std::io::stderr().is_terminal() {
            let mut line = LINE.lock().unwrap_or_else(|e| e.into_inner());
            let line = line.get_or_insert_with(Line::default);
            line.parts.insert(key, (Instant::now(), text));
            if !line.drawing {
                line.drawing = true;
                std::thread::spawn(draw);
            }
        }
        Status { key }
    }

    /// Replaces this work's text.
    pub fn set(&self, text: String) {
        let mut line = LINE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, part)) = line.as_mut().and_then(|l| l.parts.get_mut(&self.key)) {
            *part = text;
        }
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        let mut line = LINE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = line.as_mut() {
            line.parts.remove(&self.key);
            // Erased now, not at the next redraw: whatever comes next (a prompt, a table) may
            // already be on that line by then.
            if line.parts.is_empty() && line.shown {
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "\r\x1b[K");
                let _ = stderr.flush();
                line.shown = false;
            }
        }
    }
}

/// Redraws the line while there is work; erases it and stops when there is none.
fn draw() {
    loop {
        std::thread::sleep(REDRAW_EVERY);
        let mut guard = LINE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = guard.as_mut() else { return };
        let mut stderr = std::io::stderr().lock();
        if line.parts.is_empty() {
            if line.shown {
                let _ = write!(stderr, "\r\x1b[K");
                let _ = stderr.flush();
            }
            line.shown = false;
            line.drawing = false;
            return;
        }
        let due: Vec<&str> = line
            .parts
            .values()
            .filter(|(since, _)| since.elapsed() >= QUIET_FOR)
            .map(|(_, text)| text.as_str())
            .collect();
        if !due.is_empty() {
            let _ = write!(stderr, "\r{}\x1b[K", due.join(" · "));
            let _ = stderr.flush();
            line.shown = true;
        }
    }
}

/// Copies of the host program going on at once, shown as one piece of work.
#[derive(Default)]
pub struct Copies {
    hosts: Mutex<BTreeMap<String, (u64, u64)>>,
    status: Mutex<Option<Status>>,
}

impl Copies {
    /// Takes in how a copy goes.
    pub fn update(&self, progress: &nu_session_client::ssh::DeployProgress) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if progress.done {
            hosts.remove(&progress.computer_name);
        } else {
            hosts.insert(
                progress.computer_name.clone(),
                (progress.sent, progress.total),
            );
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.is_empty() {
            *status = None;
            return;
        }
        let (sent, total) = hosts
            .values()
            .fold((0, 0), |(s, t), (sent, total)| (s + sent, t + total));
        let to = match hosts.len() {
            1 => hosts.keys().next().cloned().unwrap_or_default(),
            n => format!("{n} hosts"),
        };
        let mb = |b: u64| b as f64 / 1_000_000.0;
        let text = format!(
            "copying nu-session-host to {to}: {:.0}/{:.0} MB",
            mb(sent),
            mb(total)
        );
        match status.as_ref() {
            Some(status) => status.set(text),
            None => *status = Some(Status::new(text)),
        }
    }
}

/// A progress callback for the client that feeds `copies`.
pub fn copy_progress(copies: Arc<Copies>) -> nu_session_client::ssh::host_program::Progress {
    Arc::new(move |progress| copies.update(progress))
}
