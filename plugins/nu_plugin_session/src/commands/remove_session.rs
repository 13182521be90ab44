use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};
use nu_session_client::{ClientError, ErrorKind};

use super::category;
use crate::SessionPlugin;
use crate::errors::client_error;
use crate::select::{Criteria, selection_signature};

pub struct RemoveSession;

impl PluginCommand for RemoveSession {
    type Plugin = SessionPlugin;

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

    fn signature(&self) -> Signature {
        selection_signature(Signature::build(self.name()))
            .input_output_types(vec![(Type::Any, Type::Nothing)])
            .switch(
                "what-if",
                "Print what would be removed and change nothing.",
                None,
            )
            .category(category())
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
            "no sessions to remove",
            "`get-session | remove-session` removes them all",
        )?;
        let ids = criteria.select(&plugin.sessions())?;
        if call.has_flag("what-if")? {
            super::what_if(plugin, &ids, "Remove");
            return Ok(PipelineData::empty());
        }
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = remove(plugin, id) {
                failures.push(client_error(&e, span));
            }
        }
        plugin.keep_alive(engine);
        match failures.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(PipelineData::empty()),
        }
    }
}

/// Closes the session here and deletes it on its host (one already gone there is no error).
pub(crate) fn remove(plugin: &SessionPlugin, id: i64) -> Result<(), ClientError> {
    let target = {
        let mut table = plugin.sessions();
        table.get_mut(id).and_then(|session| {
            let open = !session.closed;
            session.close();
            session.removed = true;
            open.then(|| (session.host.clone(), session.instance_id))
        })
    };
    match target {
        Some((host, instance_id)) => match host.remove_session(instance_id) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}
