//! The host's own settings, chosen by whoever runs the host (not by clients): the longest idle
//! timeout a client may ask for, how much unread output a session keeps, how often an
//! attached client must be heard from, and the largest message (a value with its event, an
//! invocation with its input) a session sends or accepts.
//!
//! Read from `$NU_SESSION_HOST_CONFIG`, else `$XDG_CONFIG_HOME/nu-session/host.json`, else
//! `~/.config/nu-session/host.json`; a missing file means the defaults. Example:
//!
//! ```json
//! { "max_idle_timeout_secs": 604800, "output_buffer_bytes": 16777216, "client_heartbeat_secs": 10,
//!   "max_message_bytes": 1073741824 }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use nu_session_protocol::{DEFAULT_MAX_MESSAGE_LEN, ErrorKind, MAX_FRAME_LEN, RemoteError};
use serde::Deserialize;

/// The shortest idle timeout, as PowerShell's (60 seconds).
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default longest idle timeout: a week.
pub const DEFAULT_MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default bound on a session's unread output: 16 MiB.
pub const DEFAULT_OUTPUT_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// How often an attached client is heard from by default; three silent beats (30 s) and the
/// session lets go of it.
pub const DEFAULT_CLIENT_HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub max_idle_timeout: Duration,
    pub output_buffer_bytes: usize,
    pub client_heartbeat: Duration,
    pub max_message_bytes: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_idle_timeout: DEFAULT_MAX_IDLE_TIMEOUT,
            output_buffer_bytes: DEFAULT_OUTPUT_BUFFER_BYTES,
            client_heartbeat: DEFAULT_CLIENT_HEARTBEAT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_LEN,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    max_idle_timeout_secs: Option<u64>,
    output_buffer_bytes: Option<usize>,
    client_heartbeat_secs: Option<u64>,
    max_message_bytes: Option<usize>,
}

impl HostConfig {
    /// Where the settings are read from.
    pub fn path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("NU_SESSION_HOST_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config_home.join("nu-session").join("host.json"))
    }

    /// The settings; an unreadable or invalid file is an error naming it.
    pub fn load() -> Result<HostConfig, String> {
        let Some(path) = Self::path() else {
            return Ok(HostConfig::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HostConfig::default());
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: File = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid host settings: {e}", path.display()))?;
        let config = HostConfig {
            max_idle_timeout: file
                .max_idle_timeout_secs
                .map_or(DEFAULT_MAX_IDLE_TIMEOUT, Duration::from_secs),
            output_buffer_bytes: file
                .output_buffer_bytes
                .unwrap_or(DEFAULT_OUTPUT_BUFFER_BYTES),
            client_heartbeat: file
                .client_heartbeat_secs
                .map_or(DEFAULT_CLIENT_HEARTBEAT, Duration::from_secs),
            max_message_bytes: file.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_LEN),
        };
        if config.max_message_bytes < MAX_FRAME_LEN {
            return Err(format!(
                "{}: max_message_bytes must be at least {MAX_FRAME_LEN} (one frame)",
                path.display()
            ));
        }
        if config.max_idle_timeout < MIN_IDLE_TIMEOUT {
            return Err(format!(
                "{}: max_idle_timeout_secs must be at least {}",
                path.display(),
                MIN_IDLE_TIMEOUT.as_secs()
            ));
        }
        if config.client_heartbeat.is_zero() || config.client_heartbeat > Duration::from_secs(3600)
        {
            return Err(format!(
                "{}: client_heartbeat_secs must be from 1 to 3600",
                path.display()
            ));
        }
        if config.output_buffer_bytes == 0 {
            return Err(format!(
                "{}: output_buffer_bytes must be more than 0",
                path.display()
            ));
        }
        Ok(config)
    }

    /// Refuses an idle timeout outside [`MIN_IDLE_TIMEOUT`, max], naming both limits.
    pub fn check_idle_timeout(&self, timeout: Duration) -> Result<(), RemoteError> {
        if timeout >= MIN_IDLE_TIMEOUT && timeout <= self.max_idle_timeout {
            return Ok(());
        }
        Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!(
                "the idle timeout {} is out of range: it must be at least {} and at most {}",
                human(timeout),
                human(MIN_IDLE_TIMEOUT),
                human(self.max_idle_timeout)
            ),
        )
        .with_help(
            "the maximum is the host's max_idle_timeout_secs (see docs/disconnected-sessions.md)",
        ))
    }
}

/// A duration as Nushell writes one (`1wk`, `2hr`, `90sec`).
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    for (unit, size) in [("wk", 604_800), ("day", 86_400), ("hr", 3_600), ("min", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    if duration.subsec_nanos() == 0 {
        format!("{secs}sec")
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_in_the_error() {
        let config = HostConfig::default();
        assert!(config.check_idle_timeout(Duration::from_secs(60)).is_ok());
        assert!(config.check_idle_timeout(DEFAULT_MAX_IDLE_TIMEOUT).is_ok());
        let low = config
            .check_idle_timeout(Duration::from_secs(30))
            .unwrap_err();
        assert!(low.msg.contains("30sec"), "{}", low.msg);
        assert!(
            low.msg.contains("at least 1min and at most 1wk"),
            "{}",
            low.msg
        );
        let high = config
            .check_idle_timeout(Duration::from_secs(8 * 86_400))
            .unwrap_err();
        assert!(high.msg.contains("8day"), "{}", high.msg);
    }

    #[test]
    fn durations_read_as_nushell_writes_them() {
        assert_eq!(human(Duration::from_secs(90)), "90sec");
        assert_eq!(human(Duration::from_secs(7200)), "2hr");
        assert_eq!(human(Duration::from_secs(86_400)), "1day");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
