//! One command per file.

mod connect_session;
mod disconnect_session;
mod enter_session;
mod exit_session;
mod get_session;
mod invoke_session;
mod new_session;
mod receive_session;
mod remove_session;

pub use connect_session::ConnectSession;
pub use disconnect_session::DisconnectSession;
pub use enter_session::EnterSession;
pub use exit_session::ExitSession;
pub use get_session::GetSession;
pub use invoke_session::InvokeSession;
pub use new_session::NewSession;
pub use receive_session::ReceiveSession;
pub use remove_session::RemoveSession;

use std::path::PathBuf;

use nu_plugin::{EngineInterface, EvaluatedCall};
use nu_protocol::{
    Category, LabeledError, ShellError, Signature, Span, Spanned, SyntaxShape, Value,
};
use nu_session_client::computer::ComputerName;
use nu_session_client::ssh::SshOptions;
use nu_session_client::{Host, Layout, Transport};

use crate::SessionPlugin;
use crate::errors::client_error;
use crate::sessions::{Session, TransportKind};

pub(crate) use invoke_session::{Interrupters, invoke_one};
pub(crate) use new_session::{idle_timeout, output_buffering, ssh_options};

/// `--throttle-limit`: how many computers or sessions at once; 0 or nothing means the default.
pub(crate) fn throttle_limit(call: &EvaluatedCall) -> Result<usize, LabeledError> {
    match call.get_flag::<Spanned<i64>>("throttle-limit")? {
        Some(limit) if limit.item < 0 => {
            Err(LabeledError::new("the throttle limit cannot be negative")
                .with_label("must be 0 (meaning 32) or more", limit.span))
        }
        Some(limit) if limit.item > 0 => Ok(limit.item as usize),
        _ => Ok(crate::fanout::DEFAULT_THROTTLE),
    }
}

/// `--what-if`: says what `operation` would do to each session, on stderr, as PowerShell does.
pub(crate) fn what_if(plugin: &SessionPlugin, ids: &[i64], operation: &str) {
    let table = plugin.sessions();
    for session in ids.iter().filter_map(|id| table.get(*id)) {
        eprintln!(
            "What if: Performing the operation \"{operation}\" on target \"{}\" (session {}, {}).",
            session.computer_name, session.id, session.name
        );
    }
}

/// The flags that say how to reach computers over SSH (they override the ssh config).
pub(crate) fn ssh_flags(signature: Signature) -> Signature {
    signature
        .named("user", SyntaxShape::String, "The user to log in as (SSH).", Some('u'))
        .named("port", SyntaxShape::Int, "The SSH port.", Some('p'))
        .named(
            "identity-file",
            SyntaxShape::Filepath,
            "The private key to log in with (SSH).",
            Some('i'),
        )
        .named(
            "connect-timeout",
            SyntaxShape::Duration,
            "How long to wait for a computer to answer (SSH).",
            None,
        )
        .named(
            "strict-host-key-checking",
            SyntaxShape::String,
            "What to do with an unknown host key (SSH): yes (refuse, default), accept-new (record it) or no.",
            None,
        )
}

/// The host behind a computer name: this machine for `localhost`, else over SSH.
pub(crate) fn host_for(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    computer: &Spanned<String>,
    ssh: &SshOptions,
) -> Result<(Host, TransportKind), LabeledError> {
    if computer.item.eq_ignore_ascii_case("localhost") {
        return Ok((local_host(plugin, engine)?, TransportKind::Local));
    }
    let name = ComputerName::parse(&computer.item).map_err(|e| {
        LabeledError::new(e.to_string())
            .with_label("not a valid computer name", computer.span)
            .with_help("use host, user@host, host:port, user@host:port or [v6addr]:port")
    })?;
    let host = plugin
        .client()?
        .ssh_host(&name, ssh)
        .map_err(|e| client_error(&e, computer.span))?;
    Ok((host, TransportKind::Ssh))
}

/// `--computer-name` of get-session, connect-session and receive-session: asks each computer for
/// all of this user's sessions there and adds the ones this process has not seen to its table
/// (Disconnected; Busy when another client is attached). Known ones are updated.
pub(crate) fn discover(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    call: &EvaluatedCall,
) -> Result<(), LabeledError> {
    let Some(value) = call.get_flag_value("computer-name") else {
        return Ok(());
    };
    let computers: Vec<Spanned<String>> = match &value {
        Value::List { vals, .. } => vals
            .iter()
            .map(|v| {
                Ok(Spanned {
                    item: v.coerce_string()?,
                    span: v.span(),
                })
            })
            .collect::<Result<_, ShellError>>()?,
        other => vec![Spanned {
            item: other.coerce_string()?,
            span: other.span(),
        }],
    };
    let ssh = ssh_options(plugin, call, engine)?;
    for computer in computers {
        // A glob selects among known sessions; only a real name can be asked.
        if crate::select::is_glob(&computer.item) {
            continue;
        }
        let (host, transport) = host_for(plugin, engine, &computer, &ssh)?;
        let infos = host.list_sessions();
        plugin.tell_notices(&computer.item, &host);
        let infos = infos.map_err(|e| client_error(&e, computer.span))?;
        let mut table = plugin.sessions();
        for info in infos {
            if let Some(known) = table.by_instance_id(info.instance_id) {
                if !known.closed {
                    known.update(&info);
                }
                continue;
            }
            let id = table.next_id();
            let port = host.port();
            let mut session = Session::from_info(
                id,
                info.clone(),
                computer.item.clone(),
                transport,
                port,
                host.clone(),
                None,
            );
            session.update(&info);
            table.insert(session);
        }
    }
    plugin.keep_alive(engine);
    Ok(())
}

/// A list of results where a failure for one session is an error row, or the command's error
/// when there was only one.
pub(crate) fn rows_or_error(
    rows: Vec<Result<Value, LabeledError>>,
    span: Span,
) -> Result<Value, LabeledError> {
    let mut rows = rows;
    if rows.len() == 1
        && rows[0].is_err()
        && let Some(Err(error)) = rows.pop()
    {
        return Err(error);
    }
    Ok(Value::list(
        rows.into_iter()
            .map(|row| {
                row.unwrap_or_else(|error| {
                    Value::error(ShellError::LabeledError(Box::new(error)), span)
                })
            })
            .collect(),
        span,
    ))
}

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
        Some(dir) => Layout::under(dir),
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
