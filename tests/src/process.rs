//! Processes and small helpers: is a process alive, its children, waiting for a condition,
//! reading what a session's code wrote, quoting for `sh`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Waits until `condition` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// The pids whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may contain spaces.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The pids of the processes running as `uid`.
pub fn pids_of_user(uid: u32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    all_pids()
        .into_iter()
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid))
        .collect()
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The number last written to `path` (0 before it exists). Writers such as nu's `save -f`
/// truncate before they write: an empty or partial read is read again.
pub fn read_number(path: &Path) -> i64 {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(n) = text.trim().parse() {
            return n;
        }
        if !path.exists() {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    0
}

/// The ints in a JSON list.
pub fn ints(value: &serde_json::Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_i64().unwrap_or_else(|| panic!("not an int: {v}")))
        .collect()
}

/// `text` as one word for `sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Runs a setup command that must succeed.
pub fn run_quiet(command: &mut Command) {
    let out = command.output().expect("run a setup command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `nu` whose stderr lines are collected as they come, with when they came.
pub struct Running {
    pub child: Child,
    stderr: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Running {
    pub fn new(mut child: Child) -> Running {
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push((Instant::now(), line));
            }
        });
        Running { child, stderr }
    }

    /// When a stderr line containing `text` came, waiting up to `timeout` for it.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self
                .stderr
                .lock()
                .expect("stderr lines")
                .iter()
                .find(|(_, line)| line.contains(text))
            {
                return Some(*at);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        let lines = self.stderr.lock().expect("stderr lines");
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for `nu` to exit (a hang guard, not a measurement) and returns its JSON output.
    pub fn json(mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("nu did not finish; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().expect("stdout"), &mut out)
            .expect("stdout");
        let status = self.child.wait().expect("status");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "nu failed: {status}\n--- stdout\n{out}\n--- stderr\n{}",
            self.stderr()
        );
        assert!(!self.stderr().contains("panicked"), "{}", self.stderr());
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n--- stderr\n{}", self.stderr()))
    }
}
