use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};

use super::SessionCommand;
use crate::select::{Need, select, selection_signature};
use crate::{Cx, flags, operations};

pub struct DisconnectSession;

const NEED: Need = Need::sessions(
    "no sessions to disconnect",
    "`get-session | disconnect-session` disconnects them all",
);

impl SessionCommand for DisconnectSession {
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

    fn signature(&self, base: Signature) -> Signature {
        let signature = flags::declare_session_settings(selection_signature(base), false);
        flags::declare_what_if(
            flags::declare_throttle(signature, "disconnect"),
            "disconnected",
        )
        .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
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

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin, call, span, ..
        } = *cx;
        let selected = select(cx, input, NEED)?;
        let timeout = flags::idle_timeout(call)?;
        let timeout_span = call.get_flag_span("idle-timeout").unwrap_or(span);
        let buffering = flags::output_buffering(call)?;
        let throttle = flags::throttle(call)?;
        if flags::what_if(call)? {
            plugin.what_if(&selected.ids, "Disconnect");
            return Ok(PipelineData::empty());
        }
        crate::fanout::session_records(
            plugin,
            selected,
            throttle,
            "disconnect-session",
            span,
            |id| operations::disconnect(plugin, id, timeout, buffering, timeout_span),
        )
    }
}
