use nu_plugin::EvaluatedCall;
use nu_protocol::{
    Example, LabeledError, PipelineData, Signature, Spanned, SyntaxShape, Type, Value,
};

use super::SessionCommand;
use crate::select::{Need, select, selection_signature};
use crate::sessions::SessionState;
use crate::{Cx, flags};

pub struct GetSession;

impl SessionCommand for GetSession {
    fn name(&self) -> &str {
        "get-session"
    }

    fn description(&self) -> &str {
        "List the sessions of this nu process."
    }

    fn extra_description(&self) -> &str {
        "Without arguments, lists every session in id order. Ids, --name (a case-insensitive glob), \
         --instance-id and piped sessions choose which; --state and --config-name filter them. \
         --computer-name asks those hosts for all of this user's sessions there, including ones \
         made by other nu processes or machines, and adds the new ones to this process's table."
    }

    fn signature(&self, base: Signature) -> Signature {
        flags::declare_ssh(selection_signature(base))
            // A list, not a table: a computer that cannot be reached is an error row.
            .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
            .named(
                "state",
                SyntaxShape::String,
                "Only sessions in this state: All, Opened, Disconnected, Broken or Closed.",
                Some('s'),
            )
            .named(
                "config-name",
                SyntaxShape::String,
                "Only sessions of this configuration.",
                None,
            )
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "list", "sessions"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "new-session --name web1; new-session --name web2; new-session --name db; get-session --name web* | get name",
                description: "Get the sessions whose names start with web",
                result: Some(Value::test_list(vec![
                    Value::test_string("web1"),
                    Value::test_string("web2"),
                ])),
            },
            Example {
                example: "new-session --name logs; get-session --state Opened --name logs | get 0.availability",
                description: "Get open sessions: an idle one is available",
                result: Some(Value::test_string("Available")),
            },
            Example {
                example: "get-session --name nothing-like-this*",
                description: "A glob that matches nothing gives nothing, without an error",
                result: Some(Value::test_list(vec![])),
            },
        ]
    }

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin, call, span, ..
        } = *cx;
        let states = state_filter(call)?;
        let config = call.get_flag::<String>("config-name")?;
        plugin.refresh();
        let selected = select(cx, input, Need::EVERYTHING)?.or_lone_failure()?;
        let failures = selected.failures();
        let mut ids = selected.ids;
        let mut rows = {
            let table = plugin.sessions();
            ids.sort_unstable();
            ids.retain(|id| {
                table.get(*id).is_some_and(|s| {
                    states.contains(&s.state())
                        && config
                            .as_ref()
                            .is_none_or(|c| c.eq_ignore_ascii_case(&s.configuration_name))
                })
            });
            table.records(&ids, span)
        };
        rows.extend(failures.into_iter().map(|error| {
            Value::error(nu_protocol::ShellError::LabeledError(Box::new(error)), span)
        }));
        Ok(PipelineData::value(Value::list(rows, span), None))
    }
}

fn state_filter(call: &EvaluatedCall) -> Result<Vec<SessionState>, LabeledError> {
    let Some(state) = call.get_flag::<Spanned<String>>("state")? else {
        return Ok(SessionState::ALL.to_vec());
    };
    if state.item.eq_ignore_ascii_case("all") {
        return Ok(SessionState::ALL.to_vec());
    }
    SessionState::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(&state.item))
        .map(|s| vec![s])
        .ok_or_else(|| {
            LabeledError::new(format!("`{}` is not a session state", state.item)).with_label(
                "expected All, Opened, Disconnected, Broken or Closed",
                state.span,
            )
        })
}
