use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{Example, LabeledError, PipelineData, Signature, Type, Value};

use super::category;
use crate::select::{Need, select, selection_signature};
use crate::{SessionPlugin, flags, operations};

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
        flags::declare_throttle(
            flags::declare_ssh(selection_signature(Signature::build(self.name()))),
            "connect",
        )
        .input_output_types(vec![(Type::Any, Type::list(Type::Any))])
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
        let selected = select(
            plugin,
            engine,
            call,
            input,
            true,
            Need::Sessions {
                nothing: "no sessions to connect",
                help: "`get-session --computer-name <host>` lists a host's sessions",
            },
        )?
        .or_lone_failure()?;
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
