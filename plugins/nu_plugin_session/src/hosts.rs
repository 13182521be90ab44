//! The host behind a computer name: this machine for `localhost` (or no name), else over SSH.

use std::path::PathBuf;

use nu_plugin::EngineInterface;
use nu_protocol::{LabeledError, Spanned};
use nu_session_client::computer::ComputerName;
use nu_session_client::ssh::SshOptions;
use nu_session_client::{Host, Layout, Transport};

use crate::SessionPlugin;
use crate::errors::client_error;
use crate::flags::env;
use crate::sessions::TransportKind;

/// The host `computer` names, and how it is reached.
pub fn host_for(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    computer: &Spanned<String>,
    ssh: &SshOptions,
) -> Result<(Host, TransportKind), LabeledError> {
    if computer.item.eq_ignore_ascii_case("localhost") {
        return Ok((local_host(plugin, engine)?, TransportKind::Local));
    }
    let name = parse_computer_name(computer)?;
    let host = plugin
        .client()?
        .ssh_host(&name, ssh)
        .map_err(|e| client_error(&e, computer.span))?;
    Ok((host, TransportKind::Ssh))
}

/// A computer name as typed, validated.
pub fn parse_computer_name(computer: &Spanned<String>) -> Result<ComputerName, LabeledError> {
    ComputerName::parse(&computer.item).map_err(|e| {
        LabeledError::new(e.to_string())
            .with_label("not a valid computer name", computer.span)
            .with_help("use host, user@host, host:port, user@host:port or [v6addr]:port")
    })
}

/// The host on this machine. `$env.NU_SESSION_DIR` and `$env.NU_SESSION_HOST`, when set in the
/// calling scope, choose its runtime directory and the `nu-session-host` program.
pub fn local_host(plugin: &SessionPlugin, engine: &EngineInterface) -> Result<Host, LabeledError> {
    let layout = match env(engine, "NU_SESSION_DIR")? {
        Some(dir) => Layout::under(dir),
        None => Layout::from_env(),
    };
    let program = env(engine, "NU_SESSION_HOST")?.map(PathBuf::from);
    Ok(plugin.client()?.host(Transport::local(layout, program)))
}
