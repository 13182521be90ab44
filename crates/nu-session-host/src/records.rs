//! A session's files in the runtime directory, owned here for both sides that use them: the
//! worker writes them and deletes them when its session ends; the manager reads them to find
//! sessions and cleans up after a worker that died.
//!
//! ```text
//! sessions/<id>.json    the session's SessionFile (settings, pid and which process it is, version)
//! sessions/<id>.sock    its worker's socket
//! sessions/<id>.log     its worker's diagnostics
//! sessions/<id>.ended   why it ended, kept END_RECORDS_KEPT for clients that knew it
//! ```

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nu_session_protocol::SessionInfo;
use nu_session_protocol::layout::Layout;
use uuid::Uuid;

/// What the worker writes to `sessions/<id>.json`: enough for a manager to find it again, and for
/// hosts of other versions to say whose it is.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionFile {
    pub info: SessionInfo,
    pub pid: u32,
    /// The nu-session version of the worker (absent in files of protocol 3 and earlier).
    #[serde(default)]
    pub software_version: Option<String>,
    /// Which process `pid` is: the boot it ran in and when it started (clock ticks since boot,
    /// `/proc/<pid>/stat`), so that a pid reused by another process (after a reboot with a
    /// persistent /tmp, or much later) is never taken for the worker. Absent without procfs.
    #[serde(default)]
    pub process: Option<ProcessId>,
}

/// A process as it can be told apart from a later one with the same pid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub boot_id: String,
    pub start_time: u64,
}

impl ProcessId {
    /// `pid`'s, read from procfs; `None` without it, or when there is no such process.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcessId {
            boot_id: boot_id.trim().to_string(),
            start_time: start_time(&stat)?,
        })
    }
}

/// Field 22 of `/proc/<pid>/stat`; the command name before it (field 2, in parentheses) may
/// hold spaces and parentheses itself.
fn start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3 onwards: state is the first, start time the 20th.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// How long the reasons of ended sessions are kept.
const END_RECORDS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

impl SessionFile {
    pub fn new(info: SessionInfo) -> SessionFile {
        SessionFile {
            info,
            pid: std::process::id(),
            software_version: Some(nu_session_protocol::SOFTWARE_VERSION.to_string()),
            process: ProcessId::of(std::process::id()),
        }
    }

    pub fn write(&self, layout: &Layout) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        std::fs::write(layout.session_meta(self.info.instance_id), bytes)
    }

    pub fn read(layout: &Layout, id: Uuid) -> Option<SessionFile> {
        std::fs::read(layout.session_meta(id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }
}

/// Whether the session `id` has its files (its worker runs, or died without cleaning up).
pub fn exists(layout: &Layout, id: Uuid) -> bool {
    layout.session_meta(id).exists()
}

/// The files that live as long as the session (everything but the end record).
pub fn live_files(layout: &Layout, id: Uuid) -> [PathBuf; 4] {
    [
        layout.session_socket(id),
        layout.session_meta(id),
        layout.session_log(id),
        crate::conn::rotated(&layout.session_log(id)),
    ]
}

/// Deletes the session's live files.
pub fn remove(layout: &Layout, id: Uuid) {
    for path in live_files(layout, id) {
        let _ = std::fs::remove_file(path);
    }
}

/// The sessions that have files in `layout`.
pub fn ids(layout: &Layout) -> Vec<Uuid> {
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

/// The worker's pid, from the session's file, while that process is still the worker that
/// wrote it (a zombie not reaped yet is): never a pid another process has since.
pub fn worker_pid(layout: &Layout, id: Uuid) -> Option<i32> {
    let file = SessionFile::read(layout, id)?;
    let pid = i32::try_from(file.pid).ok().filter(|pid| *pid > 1)?;
    match &file.process {
        Some(recorded) => (ProcessId::of(file.pid).as_ref() == Some(recorded)).then_some(pid),
        // Written without procfs (or by an earlier version): the pid is all there is.
        None => Some(pid),
    }
}

/// Records why a session ended, for the clients that were attached to it.
pub fn record_end(layout: &Layout, id: Uuid, why: &str) {
    let _ = std::fs::write(layout.session_ended(id), why);
}

/// Records why a session ended unless a more precise reason is recorded already.
pub fn record_end_once(layout: &Layout, id: Uuid, why: &str) {
    if let Ok(mut file) = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(layout.session_ended(id))
    {
        let _ = file.write_all(why.as_bytes());
    }
}

/// Why the session ended, if recorded. A session whose worker just died is being recorded by
/// its reaper: wait for it a moment.
pub fn end_reason(layout: &Layout, id: Uuid) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(reason) = std::fs::read_to_string(layout.session_ended(id)) {
            return Some(reason.trim().to_string());
        }
        let dying = exists(layout, id)
            && std::os::unix::net::UnixStream::connect(layout.session_socket(id)).is_err();
        if !dying || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forgets the reasons of sessions that ended long ago.
pub fn prune_end_records(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(layout.sessions_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > END_RECORDS_KEPT));
        if old && entry.file_name().to_string_lossy().ends_with(".ended") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_any_command_name() {
        let fields = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21";
        assert_eq!(start_time(&format!("77 (nu) {fields}")), Some(4242));
        assert_eq!(start_time(&format!("77 (a) b (c)) {fields}")), Some(4242));
        assert_eq!(start_time("77 (nu) S 1"), None);
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn this_process_is_told_apart_from_one_with_another_start() {
        let me = ProcessId::of(std::process::id()).expect("procfs");
        assert_eq!(ProcessId::of(std::process::id()), Some(me.clone()));
        assert!(me.start_time > 0);
        assert_eq!(ProcessId::of(u32::MAX), None);
    }
}
