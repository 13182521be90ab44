use nu_protocol::{
    Example, LabeledError, PipelineData, Record, Signature, Span, Spanned, SyntaxShape, Type, Value,
};
use nu_session_client::SessionSettings;
use nu_session_client::computer::validate_user;
use nu_session_client::ssh::SshOptions;

use super::SessionCommand;
use crate::errors::client_error;
use crate::hosts::{local_host, parse_computer_name};
use crate::sessions::{Session, TransportKind};
use crate::{Cx, flags, operations};

pub struct NewSession;

impl SessionCommand for NewSession {
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

    fn signature(&self, base: Signature) -> Signature {
        let signature = base
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
            .named("config-name", SyntaxShape::String, "The session configuration on the host (default: default).", None);
        flags::declare_throttle(
            flags::declare_session_settings(flags::declare_ssh(signature), true),
            "open",
        )
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

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin,
            engine,
            call,
            span,
            ..
        } = *cx;
        let mut computers: Vec<Computer> = call
            .rest::<Spanned<String>>(0)?
            .into_iter()
            .map(Computer::named)
            .collect();
        computers.extend(computers_from_input(input)?);
        let idle_timeout = flags::idle_timeout(call)?.unwrap_or(flags::DEFAULT_IDLE_TIMEOUT);
        let output_buffering = flags::output_buffering(call)?.unwrap_or_default();
        let configuration_name = call
            .get_flag::<String>("config-name")?
            .unwrap_or_else(|| "default".into());
        let throttle = flags::throttle(call)?;
        let name_flag = call.get_flag::<String>("name")?;
        let ssh = flags::ssh(plugin, call, engine)?;

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
                    let label = computer.name.span;
                    let name = parse_computer_name(&computer.name)?;
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
                    (host, computer.name.item.clone(), TransportKind::Ssh, label)
                }
            };
            let opened = operations::open(
                *id,
                host.clone(),
                computer_name.clone(),
                transport,
                settings,
            );
            plugin.tell_notices(&computer_name, &host);
            opened.map_err(|e| client_error(&e, label))
        };
        let results = crate::fanout::run_each(
            &targets,
            throttle,
            "new-session",
            |target| target.1.as_ref().map_or(span, |c| c.name.span),
            open,
        );
        let rows = targets
            .iter()
            .zip(results)
            .map(|((_, computer), result)| {
                let target = computer
                    .as_ref()
                    .map_or_else(|| "localhost".to_string(), |c| c.name.item.clone());
                let row = result.map(|session| {
                    let record = crate::record::session_record(&session, span);
                    plugin.sessions().insert(session);
                    record
                });
                (target, row)
            })
            .collect();
        Ok(PipelineData::value(crate::fanout::rows(rows, span)?, None))
    }
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
        Some(v) => Some(flags::port_number(v.as_int()?, v.span())?),
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
