use std::time::Duration;

use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{
    Example, LabeledError, PipelineData, Record, ShellError, Signature, Span, Spanned, SyntaxShape,
    Type, Value,
};
use nu_session_client::computer::{ComputerName, validate_user};
use nu_session_client::ssh::{DEPLOY_ENV, Deploy, SshOptions, StrictHostKeyChecking};
use nu_session_client::{ClientError, Host, OutputBuffering, SessionSettings};

use super::{category, local_host};
use crate::SessionPlugin;
use crate::errors::client_error;
use crate::sessions::{Session, TransportKind};

/// The shortest idle timeout a session accepts, as in PowerShell.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

pub struct NewSession;

impl PluginCommand for NewSession {
    type Plugin = SessionPlugin;

    fn name(&self) -> &str {
        "new-session"
    }

    fn description(&self) -> &str {
        "Open persistent sessions: on this machine, or on remote computers over SSH."
    }

    fn extra_description(&self) -> &str {
        "A session keeps its variables, definitions, environment and working directory between \
         invocations, and lives on its host until it is removed or its idle timeout expires."
    }

    fn signature(&self) -> Signature {
        super::ssh_flags(Signature::build(self.name()))
            // A list, not a table: a computer that cannot be reached is an error row.
            .input_output_types(vec![
                (Type::Nothing, Type::list(Type::Any)),
                (Type::String, Type::list(Type::Any)),
                (Type::list(Type::String), Type::list(Type::Any)),
                (Type::record(), Type::list(Type::Any)),
                (Type::table(), Type::list(Type::Any)),
            ])
            .rest(
                "computer_name",
                SyntaxShape::String,
                "Computers to open sessions on: host, user@host, host:port, or an ssh config alias. None: this machine.",
            )
            .named("name", SyntaxShape::String, "A friendly name for the sessions.", Some('n'))
            .named("config-name", SyntaxShape::String, "The session configuration on the host (default: default).", None)
            .named("idle-timeout", SyntaxShape::Duration, "How long the host keeps the session with nobody connected (at least 1min; default 2hr).", None)
            .named("output-buffering", SyntaxShape::String, "When nobody reads the output and the buffer is full: Block (pause, default) or Drop (discard the oldest).", None)
            .named("throttle-limit", SyntaxShape::Int, "How many sessions to open at once (default 32).", None)
            .category(category())
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "remote", "ssh", "open"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        let span = Span::test_data();
        vec![
            Example {
                example: "new-session --name work | select name transport state",
                description: "Open a session on this machine",
                result: Some(Value::test_list(vec![Value::test_record(
                    nu_protocol::record! {
                        "name" => Value::test_string("work"),
                        "transport" => Value::test_string("Local"),
                        "state" => Value::test_string("Opened"),
                    },
                )])),
            },
            Example {
                example: "new-session --idle-timeout 10min --output-buffering Drop | select idle_timeout output_buffering_mode",
                description: "Open a session that its host deletes after 10 minutes with nobody connected, and that keeps only the newest output when its buffer is full",
                result: Some(Value::test_list(vec![Value::test_record(
                    nu_protocol::record! {
                        "idle_timeout" => Value::duration(600_000_000_000, span),
                        "output_buffering_mode" => Value::test_string("Drop"),
                    },
                )])),
            },
            Example {
                example: "let s = new-session; invoke-session $s { $env.PWD == $nu.home-dir }",
                description: "A new session starts in the user's home directory",
                result: Some(Value::test_bool(true)),
            },
        ]
    }

    fn run(
        &self,
        plugin: &SessionPlugin,
        engine: &EngineInterface,
        call: &EvaluatedCall,
        input: PipelineData,
    ) -> Result<PipelineData, LabeledError> {
        let span = call.head;
        let mut computers: Vec<Computer> = call
            .rest::<Spanned<String>>(0)?
            .into_iter()
            .map(Computer::named)
            .collect();
        computers.extend(computers_from_input(input)?);
        let idle_timeout = idle_timeout(call)?.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let output_buffering = output_buffering(call)?.unwrap_or_default();
        let configuration_name = call
            .get_flag::<String>("config-name")?
            .unwrap_or_else(|| "default".into());
        let throttle = super::throttle_limit(call)?;
        let name_flag = call.get_flag::<String>("name")?;
        let ssh = ssh_options(plugin, call, engine)?;

        // Ids are given in the order the computers were named, before opening in parallel.
        let targets: Vec<(i64, Option<Computer>)> = if computers.is_empty() {
            vec![(plugin.sessions().next_id(), None)]
        } else {
            computers
                .into_iter()
                .map(|c| (plugin.sessions().next_id(), Some(c)))
                .collect()
        };
        let open = |(id, computer): &(i64, Option<Computer>)| -> Result<Session, LabeledError> {
            let session_name = computer.as_ref().and_then(|c| c.session_name.clone());
            let settings = SessionSettings {
                name: session_name
                    .or_else(|| name_flag.clone())
                    .unwrap_or_else(|| format!("Session{id}")),
                configuration_name: configuration_name.clone(),
                idle_timeout,
                output_buffering,
            };
            let (host, computer_name, transport, label) = match computer {
                None => (
                    local_host(plugin, engine)?,
                    "localhost".to_string(),
                    TransportKind::Local,
                    span,
                ),
                Some(computer) => {
                    let (text, label) = (&computer.name.item, computer.name.span);
                    let name = ComputerName::parse(text).map_err(|e| {
                        LabeledError::new(e.to_string())
                            .with_label("not a valid computer name", label)
                            .with_help(
                                "use host, user@host, host:port, user@host:port or [v6addr]:port",
                            )
                    })?;
                    // A piped record's own settings win over the flags.
                    let options = SshOptions {
                        user: computer.user.clone().or_else(|| ssh.user.clone()),
                        port: computer.port.or(ssh.port),
                        identity_file: computer
                            .identity_file
                            .clone()
                            .or_else(|| ssh.identity_file.clone()),
                        ..ssh.clone()
                    };
                    let host = plugin
                        .client()?
                        .ssh_host(&name, &options)
                        .map_err(|e| client_error(&e, label))?;
                    (host, text.clone(), TransportKind::Ssh, label)
                }
            };
            let opened = open(
                *id,
                host.clone(),
                computer_name.clone(),
                transport,
                settings,
            );
            plugin.tell_notices(&computer_name, &host);
            opened.map_err(|e| client_error(&e, label))
        };
        let results: Vec<Result<Session, LabeledError>> = crate::fanout::run_each(
            &targets,
            throttle,
            "new-session",
            |target| target.1.as_ref().map_or(span, |c| c.name.span),
            open,
        );

        let single = results.len() == 1;
        let mut rows = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(session) => {
                    let id = session.id;
                    plugin.sessions().insert(session);
                    rows.push(Ok(id));
                }
                // One computer that fails is the command's error; among several, it is an
                // error row while the others open.
                Err(error) if single => return Err(error),
                Err(error) => rows.push(Err(error)),
            }
        }
        plugin.keep_alive(engine);
        let table = plugin.sessions();
        let values = rows
            .into_iter()
            .filter_map(|row| match row {
                Ok(id) => table
                    .get(id)
                    .map(|s| crate::record::session_record(s, span)),
                Err(error) => Some(Value::error(
                    ShellError::LabeledError(Box::new(error)),
                    span,
                )),
            })
            .collect();
        Ok(PipelineData::value(Value::list(values, span), None))
    }
}

/// Creates a session on `host` and attaches to it: the session `id` of this process.
pub(crate) fn open(
    id: i64,
    host: Host,
    computer_name: String,
    transport: TransportKind,
    settings: SessionSettings,
) -> Result<Session, ClientError> {
    let info = host.create_session(settings)?;
    let handle = host.attach(info.instance_id, None)?;
    let port = host.port();
    Ok(Session::from_info(
        id,
        handle.info(),
        computer_name,
        transport,
        port,
        host,
        Some(handle),
    ))
}

/// The SSH settings from the flags, `$env.NU_SESSION_SSH_CONFIG` as the ssh config file, and
/// `$env.NU_SESSION_DEPLOY` (`never` turns off copying the host program to hosts without one).
pub(crate) fn ssh_options(
    plugin: &SessionPlugin,
    call: &EvaluatedCall,
    engine: &EngineInterface,
) -> Result<SshOptions, LabeledError> {
    let port = match call.get_flag::<Spanned<i64>>("port")? {
        Some(port) => Some(
            u16::try_from(port.item)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    LabeledError::new(format!("{} is not a port", port.item))
                        .with_label("expected 1 to 65535", port.span)
                })?,
        ),
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
    let env = |name: &str| -> Result<Option<String>, LabeledError> {
        Ok(engine
            .get_env_var(name)?
            .and_then(|v| v.coerce_into_string().ok())
            .filter(|s| !s.is_empty()))
    };
    let config_file = env("NU_SESSION_SSH_CONFIG")?.map(std::path::PathBuf::from);
    let deploy = Deploy {
        enabled: Deploy::allowed_by(env(DEPLOY_ENV)?.as_deref()),
        progress: Some(crate::status::copy_progress(plugin.copies.clone())),
    };
    Ok(SshOptions {
        user,
        port,
        identity_file: call.get_flag::<std::path::PathBuf>("identity-file")?,
        connect_timeout,
        strict,
        config_file,
        prompter: crate::terminal::prompter(engine),
        deploy,
    })
}

/// `--idle-timeout`, checked against the minimum.
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
            value_text(&value)
        ))
        .with_label("must be at least 1min", span)
        .with_help("the host keeps a session with nobody connected for at least 1min (60sec)")),
    }
}

/// A value as the user would write it (`30sec`).
fn value_text(value: &Value) -> String {
    value.to_expanded_string("", &nu_protocol::Config::default())
}

/// `--output-buffering`: `Block` or `Drop`.
pub fn output_buffering(call: &EvaluatedCall) -> Result<Option<OutputBuffering>, LabeledError> {
    let Some(mode) = call.get_flag::<Spanned<String>>("output-buffering")? else {
        return Ok(None);
    };
    OutputBuffering::parse(&mode.item).map(Some).ok_or_else(|| {
        LabeledError::new(format!("`{}` is not an output buffering mode", mode.item))
            .with_label("expected Block or Drop", mode.span)
    })
}

/// A computer to open a session on, with the settings a piped record may give for it alone
/// (like PowerShell's `-SSHConnection`).
struct Computer {
    name: Spanned<String>,
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<std::path::PathBuf>,
    session_name: Option<String>,
}

impl Computer {
    fn named(name: Spanned<String>) -> Computer {
        Computer {
            name,
            user: None,
            port: None,
            identity_file: None,
            session_name: None,
        }
    }
}

/// Computer names piped in: strings, or records by property name (`computer_name` or `host`,
/// and optionally `user`, `port`, `identity_file`, `name`).
fn computers_from_input(input: PipelineData) -> Result<Vec<Computer>, LabeledError> {
    let mut out = Vec::new();
    for value in input {
        let span = value.span();
        match value {
            Value::String { val, .. } => out.push(Computer::named(Spanned { item: val, span })),
            Value::Record { val, .. } => out.push(computer_from_record(&val, span)?),
            Value::Nothing { .. } => {}
            other => {
                return Err(LabeledError::new(format!(
                    "expected computer names, got {}",
                    other.get_type()
                ))
                .with_label("not a computer name or record", span));
            }
        }
    }
    Ok(out)
}

fn computer_from_record(record: &Record, span: Span) -> Result<Computer, LabeledError> {
    let value = record
        .get("computer_name")
        .or_else(|| record.get("host"))
        .ok_or_else(|| {
            LabeledError::new("this record names no computer")
                .with_label("needs a computer_name or host column", span)
        })?;
    let text = |column: &str| -> Result<Option<String>, LabeledError> {
        match record.get(column) {
            None | Some(Value::Nothing { .. }) => Ok(None),
            Some(v) => Ok(Some(v.coerce_string()?)),
        }
    };
    let user = match text("user")? {
        Some(user) => Some(
            validate_user(&user)
                .map_err(|e| LabeledError::new(e.to_string()).with_label("in this record", span))?,
        ),
        None => None,
    };
    let port = match record.get("port") {
        None | Some(Value::Nothing { .. }) => None,
        Some(v) => Some(port_number(v.as_int()?, v.span())?),
    };
    Ok(Computer {
        name: Spanned {
            item: value.coerce_string()?,
            span: value.span(),
        },
        user,
        port,
        identity_file: text("identity_file")?.map(std::path::PathBuf::from),
        session_name: text("name")?,
    })
}

fn port_number(port: i64, span: Span) -> Result<u16, LabeledError> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
        LabeledError::new(format!("{port} is not a port")).with_label("expected 1 to 65535", span)
    })
}
