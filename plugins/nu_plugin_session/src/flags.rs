//! Every flag the commands share, declared once and read once: a command's `signature` adds the
//! groups it takes, its `run` reads them with the function of the same name.

use std::path::PathBuf;
use std::time::Duration;

use nu_plugin::{EngineInterface, EvaluatedCall};
use nu_protocol::{LabeledError, Signature, Spanned, SyntaxShape, Value};
use nu_session_client::OutputBuffering;
use nu_session_client::computer::validate_user;
use nu_session_client::ssh::{DEPLOY_ENV, Deploy, SshOptions, StrictHostKeyChecking};

use crate::SessionPlugin;

/// The default `--throttle-limit`, as PowerShell's.
pub const DEFAULT_THROTTLE: usize = 32;
/// The shortest idle timeout a session accepts, as in PowerShell.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// `--throttle-limit`: how many sessions or computers `verb` at once ("open", "connect").
pub fn declare_throttle(signature: Signature, verb: &str) -> Signature {
    signature.named(
        "throttle-limit",
        SyntaxShape::Int,
        format!("How many sessions to {verb} at once (default 32); the next starts as one ends."),
        None,
    )
}

/// `--throttle-limit`; 0 or nothing means the default.
pub fn throttle(call: &EvaluatedCall) -> Result<usize, LabeledError> {
    match call.get_flag::<Spanned<i64>>("throttle-limit")? {
        Some(limit) if limit.item < 0 => {
            Err(LabeledError::new("the throttle limit cannot be negative")
                .with_label("must be 0 (meaning 32) or more", limit.span))
        }
        Some(limit) if limit.item > 0 => Ok(limit.item as usize),
        _ => Ok(DEFAULT_THROTTLE),
    }
}

/// `--what-if`: print what would be done, change nothing.
pub fn declare_what_if(signature: Signature, verb: &str) -> Signature {
    signature.switch(
        "what-if",
        format!("Print what would be {verb} and change nothing."),
        None,
    )
}

pub fn what_if(call: &EvaluatedCall) -> Result<bool, LabeledError> {
    Ok(call.has_flag("what-if")?)
}

/// `--idle-timeout` and `--output-buffering`: the settings a session keeps on its host.
pub fn declare_session_settings(signature: Signature, default: bool) -> Signature {
    let defaults = |text: &'static str| if default { text } else { "" };
    signature
        .named(
            "idle-timeout",
            SyntaxShape::Duration,
            format!(
                "How long the host keeps the session with nobody connected (at least 1min, at most the host's maximum{}).",
                defaults("; default 2hr")
            ),
            None,
        )
        .named(
            "output-buffering",
            SyntaxShape::String,
            format!(
                "When nobody reads the output and the buffer is full: Block (pause{}) or Drop (discard the oldest).",
                defaults(", default")
            ),
            None,
        )
}

/// `--idle-timeout`, checked against the minimum (the host checks its maximum).
pub fn idle_timeout(call: &EvaluatedCall) -> Result<Option<Duration>, LabeledError> {
    let Some(value) = call.get_flag_value("idle-timeout") else {
        return Ok(None);
    };
    let span = value.span();
    let nanos = value.as_duration()?;
    let timeout = u64::try_from(nanos).map(Duration::from_nanos).ok();
    match timeout {
        Some(t) if t >= MIN_IDLE_TIMEOUT => Ok(Some(t)),
        _ => Err(LabeledError::new(format!(
            "the idle timeout {} is out of range: it must be at least 1min and at most the host's maximum (1wk unless the host sets another)",
            value.to_expanded_string("", &nu_protocol::Config::default())
        ))
        .with_label("must be at least 1min", span)
        .with_help("the host keeps a session with nobody connected for at least 1min (60sec)")),
    }
}

/// `--output-buffering`: `Block` or `Drop`, case-insensitively.
pub fn output_buffering(call: &EvaluatedCall) -> Result<Option<OutputBuffering>, LabeledError> {
    let Some(mode) = call.get_flag::<Spanned<String>>("output-buffering")? else {
        return Ok(None);
    };
    OutputBuffering::parse(&mode.item).map(Some).ok_or_else(|| {
        LabeledError::new(format!("`{}` is not an output buffering mode", mode.item))
            .with_label("expected Block or Drop", mode.span)
    })
}

/// The flags that say how to reach computers over SSH (they override the ssh config).
pub fn declare_ssh(signature: Signature) -> Signature {
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

/// The SSH settings from the flags, `$env.NU_SESSION_SSH_CONFIG` as the ssh config file, and
/// `$env.NU_SESSION_DEPLOY` (`never` turns off copying the host program to hosts without one).
pub fn ssh(
    plugin: &SessionPlugin,
    call: &EvaluatedCall,
    engine: &EngineInterface,
) -> Result<SshOptions, LabeledError> {
    let port = match call.get_flag::<Spanned<i64>>("port")? {
        Some(port) => Some(port_number(port.item, port.span)?),
        None => None,
    };
    let user = match call.get_flag::<Spanned<String>>("user")? {
        Some(user) => Some(validate_user(&user.item).map_err(|e| {
            LabeledError::new(e.to_string()).with_label("not a valid user name", user.span)
        })?),
        None => None,
    };
    let strict = match call.get_flag::<Spanned<String>>("strict-host-key-checking")? {
        Some(mode) => Some(StrictHostKeyChecking::parse(&mode.item).ok_or_else(|| {
            LabeledError::new(format!("`{}` is not a host key policy", mode.item))
                .with_label("expected yes, accept-new or no", mode.span)
        })?),
        None => None,
    };
    let connect_timeout = match call.get_flag_value("connect-timeout") {
        Some(value) => Some(
            u64::try_from(value.as_duration()?)
                .map(Duration::from_nanos)
                .map_err(|_| {
                    LabeledError::new("the connect timeout cannot be negative")
                        .with_label("here", value.span())
                })?,
        ),
        None => None,
    };
    let config_file = env(engine, "NU_SESSION_SSH_CONFIG")?.map(PathBuf::from);
    let deploy = Deploy {
        enabled: Deploy::allowed_by(env(engine, DEPLOY_ENV)?.as_deref()),
        progress: Some(crate::status::copy_progress(plugin.copies.clone())),
    };
    Ok(SshOptions {
        user,
        port,
        identity_file: call.get_flag::<PathBuf>("identity-file")?,
        connect_timeout,
        strict,
        config_file,
        prompter: crate::passwords::prompter(engine),
        deploy,
    })
}

/// A non-empty environment variable of the calling scope.
pub fn env(engine: &EngineInterface, name: &str) -> Result<Option<String>, LabeledError> {
    Ok(engine
        .get_env_var(name)?
        .and_then(|v| v.coerce_into_string().ok())
        .filter(|s| !s.is_empty()))
}

/// A port: 1 to 65535.
pub fn port_number(port: i64, span: nu_protocol::Span) -> Result<u16, LabeledError> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
        LabeledError::new(format!("{port} is not a port")).with_label("expected 1 to 65535", span)
    })
}

/// `--computer-name`: one name or a list of names, with where each was written.
pub fn computer_names(call: &EvaluatedCall) -> Result<Vec<Spanned<String>>, LabeledError> {
    let Some(value) = call.get_flag_value("computer-name") else {
        return Ok(Vec::new());
    };
    let values = match value {
        Value::List { vals, .. } => vals.into_owned(),
        other => vec![other],
    };
    values
        .into_iter()
        .map(|v| {
            Ok(Spanned {
                span: v.span(),
                item: v.coerce_string()?,
            })
        })
        .collect()
}
