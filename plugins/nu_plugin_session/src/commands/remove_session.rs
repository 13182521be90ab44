use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};

use super::SessionCommand;
use crate::errors::client_error;
use crate::select::{Need, select, selection_signature};
use crate::{Cx, flags, operations};

pub struct RemoveSession;

const NEED: Need = Need::sessions(
    "no sessions to remove",
    "`get-session | remove-session` removes them all",
);

impl SessionCommand for RemoveSession {
    fn name(&self) -> &str {
        "remove-session"
    }

    fn description(&self) -> &str {
        "Close sessions: stop what runs in them and delete them on their hosts."
    }

    fn extra_description(&self) -> &str {
        "Everything running in the session is stopped, external commands included. A record of a \
         removed session shows state Closed when fetched again."
    }

    fn signature(&self, base: Signature) -> Signature {
        flags::declare_what_if(selection_signature(base), "removed")
            .input_output_types(vec![(Type::Any, Type::Nothing)])
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "close", "delete", "kill"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "new-session --name scratch | remove-session; get-session --name scratch*",
                description: "Remove a session piped from new-session",
                result: Some(Value::test_list(vec![])),
            },
            Example {
                example: "let s = new-session; remove-session --instance-id $s.0.instance_id; $s | get-session | get 0.state",
                description: "A removed session shows Closed when fetched again",
                result: Some(Value::test_string("Closed")),
            },
            Example {
                example: "get-session | remove-session",
                description: "Remove every session of this nu process",
                result: None,
            },
        ]
    }

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin, call, span, ..
        } = *cx;
        let selected = select(cx, input, NEED)?;
        if flags::what_if(call)? {
            plugin.what_if(&selected.ids, "Remove");
            return Ok(PipelineData::empty());
        }
        let done = crate::fanout::for_sessions(
            plugin,
            selected,
            flags::DEFAULT_THROTTLE,
            "remove-session",
            span,
            |id| operations::remove(plugin, id).map_err(|e| client_error(&e, span)),
        );
        crate::fanout::all_done(done, "sessions")?;
        Ok(PipelineData::empty())
    }
}
