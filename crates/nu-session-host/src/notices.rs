//! What the user of a client should know about this host, sent in the manager's hello and shown
//! once per host by the client:
//!
//! - **Logout ends sessions here.** Where logind kills a user's processes when their last login
//!   ends (`KillUserProcesses=yes`), sessions survive only outside the login's scope, in the
//!   user's systemd instance, and only if that instance outlives the login (`loginctl
//!   enable-linger`). The manager is started there when the user lingers ([`escape_login_scope`]);
//!   otherwise the user is told what to do.
//! - **Sessions of another version are here**, which this version cannot reach (each protocol
//!   version has its own runtime directory): the user is told which version holds them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nu_session_protocol::layout::Layout;

use crate::records::SessionFile;

/// Notices are computed at most this often (every client connection to the manager asks).
const FRESH_FOR: Duration = Duration::from_secs(10);

static CACHE: Mutex<Option<(Instant, Vec<String>)>> = Mutex::new(None);

/// The notices for the user this host runs as.
pub fn for_this_user(layout: &Layout) -> Vec<String> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, notices)) = cache.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return notices.clone();
    }
    let user = crate::current_user();
    let mut notices: Vec<String> = logout_notice(&user).into_iter().collect();
    notices.extend(other_versions_notice(layout));
    *cache = Some((Instant::now(), notices.clone()));
    notices
}

/// How logind treats this user's processes when their last login ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logind {
    /// Logind kills the processes of a login's scope when it ends.
    pub kills_at_logout: bool,
    /// The user's systemd instance outlives their logins (`loginctl enable-linger`).
    pub lingers: bool,
}

impl Logind {
    /// What logind says for `user`; `None` where there is no logind (a container, another OS).
    pub fn for_user(user: &str) -> Option<Logind> {
        let kills = kill_user_processes(user)?;
        Some(Logind {
            kills_at_logout: kills,
            lingers: Path::new("/var/lib/systemd/linger").join(user).exists(),
        })
    }
}

fn logout_notice(user: &str) -> Option<String> {
    let logind = Logind::for_user(user)?;
    if !logind.kills_at_logout {
        return None;
    }
    if logind.lingers && !in_login_scope() {
        return None;
    }
    let why = if logind.lingers {
        "this host's manager could not be started outside your login (systemd-run --user failed)"
    } else {
        "you do not linger there"
    };
    Some(format!(
        "this host ends your processes when you log out (logind KillUserProcesses=yes) and {why}: sessions here end when your last login to it does; `loginctl enable-linger {user}` on the host keeps them (see docs/setup-remote.md)"
    ))
}

/// Whether logind kills `user`'s processes at logout: from logind itself (`busctl`), else from
/// its configuration files. `None` when logind is not running here.
fn kill_user_processes(user: &str) -> Option<bool> {
    if let Some(answer) = ask_logind(user) {
        return Some(answer);
    }
    if !Path::new("/run/systemd/seats").exists() {
        return None;
    }
    let settings = logind_settings();
    let kills = settings
        .iter()
        .rev()
        .find(|(key, _)| key == "KillUserProcesses")
        .is_some_and(|(_, value)| is_yes(value));
    let excluded = settings
        .iter()
        .rev()
        .find(|(key, _)| key == "KillExcludeUsers")
        .map_or_else(
            || user == "root",
            |(_, value)| value.split_whitespace().any(|u| u == user),
        );
    Some(kills && !excluded)
}

/// Asks logind over D-Bus (`busctl`): `KillUserProcesses` and `KillExcludeUsers`.
fn ask_logind(user: &str) -> Option<bool> {
    let property = |name: &str| -> Option<String> {
        let out = std::process::Command::new("busctl")
            .args([
                "get-property",
                "org.freedesktop.login1",
                "/org/freedesktop/login1",
                "org.freedesktop.login1.Manager",
                name,
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // `b true`
    let kills = property("KillUserProcesses")?.strip_prefix("b ")? == "true";
    // `as 1 "root"`
    let excluded = property("KillExcludeUsers")
        .is_some_and(|list| list.split('"').skip(1).step_by(2).any(|u| u == user));
    Some(kills && !excluded)
}

fn is_yes(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "1" | "on"
    )
}

/// `key=value` lines of logind.conf and its drop-ins, in the order logind reads them (later
/// ones win).
fn logind_settings() -> Vec<(String, String)> {
    let mut files = vec![PathBuf::from("/etc/systemd/logind.conf")];
    for dir in [
        "/usr/lib/systemd/logind.conf.d",
        "/usr/local/lib/systemd/logind.conf.d",
        "/run/systemd/logind.conf.d",
        "/etc/systemd/logind.conf.d",
    ] {
        let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| {
                    let line = line.trim();
                    if line.starts_with(['#', ';', '[']) {
                        return None;
                    }
                    let (key, value) = line.split_once('=')?;
                    Some((key.trim().to_string(), value.trim().to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether this process belongs to a login's scope (`…/session-N.scope` in its cgroup).
fn in_login_scope() -> bool {
    std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|cgroups| {
        cgroups
            .lines()
            .any(|l| l.contains("/session-") && l.ends_with(".scope"))
    })
}

/// Where logind ends a login's processes with the login and the user lingers: the command that
/// starts the manager in the user's own systemd instance instead (`systemd-run --user --scope`),
/// which outlives the login. `None`: start it directly.
pub fn escape_login_scope() -> Option<std::process::Command> {
    if !in_login_scope() {
        return None;
    }
    let logind = Logind::for_user(&crate::current_user())?;
    if !(logind.kills_at_logout && logind.lingers) {
        return None;
    }
    let mut command = std::process::Command::new("systemd-run");
    command.args(["--user", "--scope", "--quiet", "--collect", "--"]);
    Some(command)
}

/// Sessions in this base directory that belong to other protocol versions (or to the layout of
/// protocol 3 and earlier), counted by the version that made them.
fn other_versions_notice(layout: &Layout) -> Vec<String> {
    let mut dirs: Vec<(Option<u32>, PathBuf)> = Vec::new();
    // Protocol 3 and earlier kept `sessions/` in the base, or in $XDG_RUNTIME_DIR/nu-session.
    dirs.push((None, layout.base().join("sessions")));
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        dirs.push((None, PathBuf::from(xdg).join("nu-session/sessions")));
    }
    for entry in std::fs::read_dir(layout.base()).into_iter().flatten() {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(protocol) = name
            .to_str()
            .and_then(|n| n.strip_prefix('p'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if protocol != nu_session_protocol::PROTOCOL_VERSION {
            dirs.push((Some(protocol), entry.path().join("sessions")));
        }
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (protocol, dir) in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(file) = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<SessionFile>(&b).ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks that the process exists.
            let alive = i32::try_from(file.pid).is_ok_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
            if !alive {
                continue;
            }
            let who = match (&file.software_version, protocol) {
                (Some(version), Some(p)) => format!("nu-session {version} (protocol {p})"),
                (None, Some(p)) => format!("a nu-session of protocol {p}"),
                _ => "a nu-session of protocol 3 or earlier".to_string(),
            };
            match counts.iter_mut().find(|(w, _)| *w == who) {
                Some((_, n)) => *n += 1,
                None => counts.push((who, 1)),
            }
        }
    }
    counts
        .into_iter()
        .map(|(who, n)| {
            let sessions = if n == 1 { "session" } else { "sessions" };
            format!(
                "this host also has {n} {sessions} of {who}, which nu-session {} cannot reach: connect to them with that version, or let them end (remove-session there, or their idle timeout)",
                nu_session_protocol::SOFTWARE_VERSION
            )
        })
        .collect()
}
