//! One command per file.

mod get_session;
mod invoke_session;
mod new_session;
mod remove_session;

pub use get_session::GetSession;
pub use invoke_session::InvokeSession;
pub use new_session::NewSession;
pub use remove_session::RemoveSession;

use std::path::PathBuf;

use nu_plugin::EngineInterface;
use nu_protocol::{Category, LabeledError, Value};
use nu_session_client::{Host, Layout, Transport};

use crate::SessionPlugin;

/// Where the session commands are listed in `help commands`.
pub(crate) fn category() -> Category {
    Category::Custom("session".into())
}

/// The host on this machine. `$env.NU_SESSION_DIR` and `$env.NU_SESSION_HOST`, when set in the
/// calling scope, choose its runtime directory and the `nu-session-host` program.
pub(crate) fn local_host(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
) -> Result<Host, LabeledError> {
    let env = |name: &str| -> Result<Option<String>, LabeledError> {
        Ok(engine
            .get_env_var(name)?
            .and_then(|v| v.coerce_into_string().ok())
            .filter(|s| !s.is_empty()))
    };
    let layout = match env("NU_SESSION_DIR")? {
        Some(dir) => Layout::at(dir),
        None => Layout::from_env(),
    };
    let program = env("NU_SESSION_HOST")?.map(PathBuf::from);
    Ok(plugin.client()?.host(Transport::local(layout, program)))
}

/// A session table as the value commands return.
pub(crate) fn sessions_value(
    plugin: &SessionPlugin,
    ids: &[i64],
    span: nu_protocol::Span,
) -> Value {
    let table = plugin.sessions();
    crate::record::session_table(ids.iter().filter_map(|id| table.get(*id)), span)
}
