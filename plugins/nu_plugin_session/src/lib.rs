//! `nu_plugin_session`: PowerShell-style persistent sessions for Nushell.
//!
//! Layout:
//! - [`commands`]: one file per command, each a thin [`commands::SessionCommand`] run with a
//!   [`Cx`].
//! - [`flags`]: every shared flag, declared and read in one place.
//! - [`select`]: choosing sessions from ids, flags and pipeline input, asking hosts when the
//!   command finds sessions made elsewhere (every command uses it).
//! - [`operations`]: what commands do to sessions: open, connect, disconnect, remove, discover.
//! - [`invocation`]: running code in one session or many, shaping results, Ctrl-C.
//! - [`fanout`]: working on many computers or sessions at once: a limit, progress, and one
//!   policy for failures (a row or a named error, never the end of the others).
//! - [`sessions`]: the session table of this `nu` process (ids, names, states, connections).
//! - [`record`]: a session as the record users see (the one place that builds it).
//! - [`hosts`]: the host behind a computer name (this machine, or SSH).
//! - [`code`]: turning a closure or a string into code a session can run, with its captured
//!   variables and parameters.
//! - [`errors`]: building the errors users see.
//! - [`completion`]: completing arguments in the user's shell.
//! - [`serve`]: serving `nu`, the plugin's messages written together where they may wait.
//! - [`encoding`]: the plugin's messages to `nu`, compact MessagePack.
//! - [`delivery`]: what `nu` took of a stream the plugin returned (its acknowledgements).
//! - [`status`]: the one status line that shows the progress of work that takes a while.
//! - [`passwords`]: asking the user for passphrases and passwords on their terminal.
//! - [`interactive`]: the prompt of `enter-session` (line editor, rendering, Ctrl-C).
//!
//! Everything that talks to hosts lives in `nu-session-client`.

pub mod code;
pub mod commands;
pub mod completion;
pub mod delivery;
pub mod encoding;
pub mod errors;
pub mod fanout;
pub mod flags;
pub mod hosts;
pub mod interactive;
pub mod invocation;
pub mod operations;
pub mod passwords;
pub mod record;
pub mod select;
pub mod serve;
pub mod sessions;
pub mod status;

use std::sync::{Mutex, MutexGuard, OnceLock};

use nu_plugin::{EngineInterface, EvaluatedCall, Plugin, PluginCommand};
use nu_protocol::{LabeledError, Span};
use nu_session_client::Client;

use sessions::SessionTable;

/// What a command runs with: the plugin's state, the engine, the call and its head span.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub plugin: &'a SessionPlugin,
    pub engine: &'a EngineInterface,
    pub call: &'a EvaluatedCall,
    pub span: Span,
}

#[derive(Default)]
pub struct SessionPlugin {
    client: OnceLock<Result<Client, String>>,
    sessions: Mutex<SessionTable>,
    /// Copies of the host program going on, for the status line.
    pub copies: std::sync::Arc<status::Copies>,
    /// The hosts' notices already shown (computer name, notice): each is shown once.
    told: Mutex<std::collections::HashSet<(String, String)>>,
}

impl Plugin for SessionPlugin {
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    fn commands(&self) -> Vec<Box<dyn PluginCommand<Plugin = Self>>> {
        commands::all()
    }
}

/// Seconds a broken connection is retried before its sessions are left disconnected on their
/// hosts (default 240, PowerShell's 4 minutes).
pub const RECONNECT_ENV: &str = "NU_SESSION_RECONNECT_SECS";

impl SessionPlugin {
    pub fn client(&self) -> Result<&Client, LabeledError> {
        self.client
            .get_or_init(|| {
                let client = Client::new().map_err(|e| e.to_string())?;
                if let Some(secs) = std::env::var(RECONNECT_ENV)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    client.set_reconnect_for(std::time::Duration::from_secs(secs));
                }
                Ok(client)
            })
            .as_ref()
            .map_err(|e| LabeledError::new(format!("cannot start the session client: {e}")))
    }

    pub fn sessions(&self) -> MutexGuard<'_, SessionTable> {
        // The table stays consistent between statements; a panic elsewhere must not lose it.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds out what happened to sessions whose connection is gone: deleted on their host
    /// (Closed) or not (Broken).
    pub fn refresh(&self) {
        let dead: Vec<(i64, nu_session_client::Host, uuid::Uuid)> = self
            .sessions()
            .all()
            .filter(|s| {
                !s.closed
                    && s.handle
                        .as_ref()
                        .is_some_and(|h| matches!(h.link(), nu_session_client::Link::Down(_)))
            })
            .map(|s| (s.id, s.host.clone(), s.instance_id))
            .collect();
        for (id, host, instance_id) in dead {
            let gone = host
                .list_sessions()
                .is_ok_and(|all| all.iter().all(|info| info.instance_id != instance_id));
            if gone && let Some(session) = self.sessions().get_mut(id) {
                session.close();
            }
        }
    }

    /// Shows on stderr what `host` said its user should know, once per notice and computer.
    pub fn tell_notices(&self, computer_name: &str, host: &nu_session_client::Host) {
        for notice in host.take_notices() {
            let new = self
                .told
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((computer_name.to_string(), notice.clone()));
            if new {
                eprintln!("warning: {computer_name}: {notice}");
            }
        }
    }

    /// `--what-if`: says what `operation` would do to each session, on stderr, as PowerShell
    /// does.
    pub fn what_if(&self, ids: &[i64], operation: &str) {
        let table = self.sessions();
        for session in ids.iter().filter_map(|id| table.get(*id)) {
            eprintln!(
                "What if: Performing the operation \"{operation}\" on target \"{}\" (session {}, {}).",
                session.computer_name, session.id, session.name
            );
        }
    }

    /// Keeps the plugin (and so its connections) alive while it holds sessions.
    pub fn keep_alive(&self, engine: &EngineInterface) {
        let live = self.sessions().has_live();
        let _ = engine.set_gc_disabled(live);
    }
}
