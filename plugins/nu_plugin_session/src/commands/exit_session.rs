use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};

use super::SessionCommand;
use crate::Cx;

pub struct ExitSession;

/// What exit-session says outside enter-session's prompt.
pub const OUTSIDE: &str = "exit-session only works inside enter-session";

impl SessionCommand for ExitSession {
    fn name(&self) -> &str {
        "exit-session"
    }

    fn description(&self) -> &str {
        "Leave the prompt of enter-session and return to the local prompt."
    }

    fn extra_description(&self) -> &str {
        "Typed as a line of its own at enter-session's prompt (as are exit and Ctrl-D), it ends \
         that prompt: a session that existed before stays Opened, a temporary one is removed. \
         Anywhere else it is an error."
    }

    fn signature(&self, base: Signature) -> Signature {
        base.input_output_types(vec![(Type::Nothing, Type::Nothing)])
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["exit-pssession", "exsn", "leave", "interactive"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "exit-session",
                description: "At the prompt of enter-session ([web1]: /home/you> ), go back to the local prompt",
                result: None,
            },
            Example {
                example: "try { exit-session } catch {|e| $e.msg }",
                description: "Anywhere else, exit-session is an error that says so",
                result: Some(Value::test_string(OUTSIDE)),
            },
        ]
    }

    fn run(&self, cx: &Cx, _input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx { call, .. } = *cx;
        // enter-session reads `exit-session` itself; a call that reaches here came from
        // elsewhere.
        Err(LabeledError::new(OUTSIDE)
            .with_label("not at enter-session's prompt", call.head)
            .with_help(
                "enter-session <id or computer name> starts a session's prompt; there, exit-session, exit or Ctrl-D leaves it",
            ))
    }
}
