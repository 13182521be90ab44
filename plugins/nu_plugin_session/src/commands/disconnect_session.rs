use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{Example, LabeledError, PipelineData, Signature, SyntaxShape, Type, Value};

use super::{category, idle_timeout, output_buffering, rows_or_error, throttle_limit};
use crate::SessionPlugin;
use crate::errors::client_error;
use crate::record::session_record;
use crate::select::{Criteria, selection_signature};
use crate::sessions::SessionState;

pub struct DisconnectSession;

impl PluginCommand for DisconnectSession {
    type Plugin = SessionPlugin;

    fn name(&self) -> &str {
        "disconnect-session"
    }

    fn description(&self) -> &str {
        "Disconnect sessions from this nu process; they keep running on their hosts."
    }

    fn extra_description(&self) -> &str {
        "Commands keep running in a disconnected session and their output waits on the host for \
         receive-session, from this or any other nu process of the same user. The host deletes \
         a session nobody connects to within its idle timeout."
    }

    fn signature(&self) -> Signature {
        selection_signature(Signature::build(self.name()))
            .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
            .named(
                "idle-timeout",
                SyntaxShape::Duration,
                "How long the host keeps the session with nobody connected (at least 1min, at most the host's maximum).",
                None,
            )
            .named(
                "output-buffering",
                SyntaxShape::String,
                "When nobody reads the output and the buffer is full: Block (pause) or Drop (discard the oldest).",
                None,
            )
            .named(
                "throttle-limit",
                SyntaxShape::Int,
                "How many sessions to disconnect at once (default 32).",
                None,
            )
            .switch(
                "what-if",
                "Print what would be disconnected and change nothing.",
                None,
            )
            .category(category())
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "detach", "background"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "new-session --name job; disconnect-session --name job | get 0.state",
                description: "Disconnect a session by name",
                result: Some(Value::test_string("Disconnected")),
            },
            Example {
                example: "new-session --name logs; get-session --name logs | disconnect-session --output-buffering Drop --idle-timeout 1day | select output_buffering_mode idle_timeout | get 0 | values",
                description: "Disconnect, keeping the newest output and the session for a day",
                result: Some(Value::test_list(vec![
                    Value::test_string("Drop"),
                    Value::test_duration(86_400_000_000_000),
                ])),
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
            "no sessions to disconnect",
            "`get-session | disconnect-session` disconnects them all",
        )?;
        let timeout = idle_timeout(call)?;
        let timeout_span = call.get_flag_span("idle-timeout").unwrap_or(span);
        let buffering = output_buffering(call)?;
        let throttle = throttle_limit(call)?;
        let ids = criteria.select(&plugin.sessions())?;
        if call.has_flag("what-if")? {
            super::what_if(plugin, &ids, "Disconnect");
            return Ok(PipelineData::empty());
        }
        let disconnect = |id: &i64| -> Result<Value, LabeledError> {
            let handle = {
                let table = plugin.sessions();
                let session = table
                    .get(*id)
                    .ok_or_else(|| LabeledError::new(format!("no session with id {id}")))?;
                if session.interactive {
                    return Err(crate::errors::in_enter_session(session, span));
                }
                match session.state() {
                    // Disconnecting a disconnected session changes nothing.
                    SessionState::Disconnected => return Ok(session_record(session, span)),
                    SessionState::Opened => session.handle.clone(),
                    state => {
                        return Err(LabeledError::new(format!(
                            "session {} ({}) is {}: it cannot be disconnected",
                            session.id,
                            session.name,
                            state.as_str()
                        ))
                        .with_label("this session", span));
                    }
                }
            };
            let Some(handle) = handle else {
                return Err(LabeledError::new("the session has no connection"));
            };
            let info = handle
                .disconnect(timeout, buffering)
                .map_err(|e| client_error(&e, timeout_span))?;
            let mut table = plugin.sessions();
            let session = table
                .get_mut(*id)
                .ok_or_else(|| LabeledError::new(format!("no session with id {id}")))?;
            session.detached(&info);
            Ok(session_record(session, span))
        };
        let rows =
            crate::fanout::run_each(&ids, throttle, "disconnect-session", |_| span, disconnect);
        // Nothing attached here any more may not need this process.
        plugin.keep_alive(engine);
        Ok(PipelineData::value(rows_or_error(rows, span)?, None))
    }
}
