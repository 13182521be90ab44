use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{Example, LabeledError, PipelineData, Signature, Span, Type, Value};

use super::{category, discover, rows_or_error, ssh_flags, throttle_limit};
use crate::SessionPlugin;
use crate::errors::client_error;
use crate::record::session_record;
use crate::select::{Criteria, selection_signature};
use crate::sessions::SessionState;

pub struct ConnectSession;

impl PluginCommand for ConnectSession {
    type Plugin = SessionPlugin;

    fn name(&self) -> &str {
        "connect-session"
    }

    fn description(&self) -> &str {
        "Reconnect disconnected sessions, made here or by any other client of the same user."
    }

    fn extra_description(&self) -> &str {
        "With --computer-name, the hosts are asked for the user's sessions there first, so \
         sessions this nu process has never seen can be connected. Connecting an Opened session \
         changes nothing; a session connected to another client (availability Busy) is an \
         error. Output produced while disconnected stays on the host for receive-session."
    }

    fn signature(&self) -> Signature {
        ssh_flags(selection_signature(Signature::build(self.name())))
            .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
            .named(
                "throttle-limit",
                nu_protocol::SyntaxShape::Int,
                "How many sessions to connect at once (default 32).",
                None,
            )
            .category(category())
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "reconnect", "attach"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "new-session --name job | disconnect-session | connect-session | get 0.state",
                description: "Reconnect a session piped from disconnect-session",
                result: Some(Value::test_string("Opened")),
            },
            Example {
                example: "get-session --computer-name web1 | where state == Disconnected | connect-session",
                description: "Connect every free session of this user on web1, wherever it was made",
                result: None,
            },
            Example {
                example: "connect-session --computer-name web1 --name ITTask",
                description: "Connect a session made by another client, by host and name",
                result: None,
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
        let criteria = Criteria::required(
            call,
            input,
            span,
            "no sessions to connect",
            "`get-session --computer-name <host>` lists a host's sessions",
        )?;
        let throttle = throttle_limit(call)?;
        discover(plugin, engine, call)?;
        let ids = criteria.select(&plugin.sessions())?;
        let rows = crate::fanout::run_each(
            &ids,
            throttle,
            "connect-session",
            |_| span,
            |id| {
                connect(plugin, *id, span).map(|()| {
                    let table = plugin.sessions();
                    table
                        .get(*id)
                        .map_or(Value::nothing(span), |s| session_record(s, span))
                })
            },
        );
        plugin.keep_alive(engine);
        Ok(PipelineData::value(rows_or_error(rows, span)?, None))
    }
}

/// Attaches this process to the session unless it is attached already.
pub(crate) fn connect(plugin: &SessionPlugin, id: i64, span: Span) -> Result<(), LabeledError> {
    let (host, instance_id) = {
        let table = plugin.sessions();
        let session = table
            .get(id)
            .ok_or_else(|| LabeledError::new(format!("no session with id {id}")))?;
        match session.state() {
            SessionState::Opened => return Ok(()),
            SessionState::Disconnected => (session.host.clone(), session.instance_id),
            state => {
                return Err(LabeledError::new(format!(
                    "session {} ({}) is {}: it cannot be connected",
                    session.id,
                    session.name,
                    state.as_str()
                ))
                .with_label("this session", span)
                .with_help(match state {
                    SessionState::Closed => {
                        "the session no longer exists; open a new one with new-session"
                    }
                    _ => "wait for the connection to come back, or remove the session",
                }));
            }
        }
    };
    match host.attach(instance_id, None) {
        Ok(handle) => {
            let mut table = plugin.sessions();
            if let Some(session) = table.get_mut(id) {
                session.attached(handle);
            }
            Ok(())
        }
        Err(error) => {
            let mut table = plugin.sessions();
            if let Some(session) = table.get_mut(id) {
                match error.kind() {
                    nu_session_client::ErrorKind::Busy => session.attached_elsewhere = true,
                    nu_session_client::ErrorKind::NotFound => session.close(),
                    _ => {}
                }
            }
            let name = table.get(id).map(|s| s.name.clone()).unwrap_or_default();
            let mut labeled = client_error(&error, span);
            labeled.msg = format!("cannot connect session {id} ({name}): {}", labeled.msg);
            Err(labeled)
        }
    }
}
