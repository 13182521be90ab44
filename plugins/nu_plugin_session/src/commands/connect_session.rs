use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};

use super::SessionCommand;
use crate::select::{ASK_A_HOST, Need, select, selection_signature};
use crate::{Cx, flags, operations};

pub struct ConnectSession;

const NEED: Need = Need::sessions("no sessions to connect", ASK_A_HOST).discovering();

impl SessionCommand for ConnectSession {
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

    fn signature(&self, base: Signature) -> Signature {
        flags::declare_throttle(flags::declare_ssh(selection_signature(base)), "connect")
            .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
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

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin, call, span, ..
        } = *cx;
        let selected = select(cx, input, NEED)?.or_lone_failure()?;
        crate::fanout::session_records(
            plugin,
            selected,
            flags::throttle(call)?,
            "connect-session",
            span,
            |id| operations::connect(plugin, id, span),
        )
    }
}
