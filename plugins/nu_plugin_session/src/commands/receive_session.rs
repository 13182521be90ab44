use std::collections::VecDeque;

use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{
    Example, LabeledError, ListStream, PipelineData, ShellError, Signature, Span, Type, Value,
};
use nu_session_client::{CallEvent, Receive};

use super::connect_session::connect;
use super::invoke_session::{OutputSink, local_value};
use super::{category, discover, ssh_flags};
use crate::SessionPlugin;
use crate::errors::{client_error, remote_error};
use crate::select::{Criteria, selection_signature};

pub struct ReceiveSession;

impl PluginCommand for ReceiveSession {
    type Plugin = SessionPlugin;

    fn name(&self) -> &str {
        "receive-session"
    }

    fn description(&self) -> &str {
        "Collect the output that commands produced in sessions while they were disconnected."
    }

    fn extra_description(&self) -> &str {
        "Connects the sessions if needed, then streams the output of the commands that ran (or \
         still run) in them while nobody was connected, and returns when they have finished. \
         Each value is delivered once across all clients: what one receive got, no other will."
    }

    fn signature(&self) -> Signature {
        ssh_flags(selection_signature(Signature::build(self.name())))
            .input_output_types(vec![(Type::Any, Type::Any)])
            .category(category())
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["pssession", "output", "results", "collect"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "let s = new-session; invoke-session $s { 1..3 | each { $in * 10 } } --disconnected; receive-session $s",
                description: "Start a command disconnected, then collect its output",
                result: Some(Value::test_list(vec![
                    Value::test_int(10),
                    Value::test_int(20),
                    Value::test_int(30),
                ])),
            },
            Example {
                example: "receive-session --computer-name web1 --name ITTask",
                description: "Collect the output of a session started from another computer",
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
            "no sessions to receive from",
            "`get-session --computer-name <host>` lists a host's sessions",
        )?;
        discover(plugin, engine, call)?;
        let ids = criteria.select(&plugin.sessions())?;
        // One session: its connection error is the command's error.
        let mut receives = VecDeque::new();
        if ids.len() == 1 {
            receives.push_back(Ok(start(plugin, ids[0], span)?));
        } else {
            receives.extend(ids.iter().map(|id| start(plugin, *id, span)));
        }
        plugin.keep_alive(engine);
        let mut values = Values {
            receives,
            output: OutputSink::new(engine),
            span,
        };
        Ok(PipelineData::list_stream(
            ListStream::new(
                std::iter::from_fn(move || values.next()),
                span,
                engine.signals().clone(),
            ),
            None,
        ))
    }
}

/// Connects the session when needed and starts receiving its backlog.
fn start(plugin: &SessionPlugin, id: i64, span: Span) -> Result<Receive, LabeledError> {
    connect(plugin, id, span)?;
    let table = plugin.sessions();
    let handle = table
        .get(id)
        .and_then(|s| s.handle.clone())
        .ok_or_else(|| LabeledError::new(format!("session {id} has no connection")))?;
    handle.receive().map_err(|e| client_error(&e, span))
}

/// The values of the sessions' backlogs, one session after the other.
struct Values {
    receives: VecDeque<Result<Receive, LabeledError>>,
    output: OutputSink,
    span: Span,
}

impl Values {
    fn next(&mut self) -> Option<Value> {
        let span = self.span;
        let error = |e: LabeledError| Value::error(ShellError::LabeledError(Box::new(e)), span);
        loop {
            let receive = match self.receives.front_mut()? {
                Ok(receive) => receive,
                Err(_) => {
                    let Some(Err(e)) = self.receives.pop_front() else {
                        continue;
                    };
                    return Some(error(e));
                }
            };
            match receive.next_event() {
                Ok(None) => {
                    self.receives.pop_front();
                }
                Ok(Some((_, event))) => match event {
                    CallEvent::Value(value) => return Some(local_value(value, span)),
                    CallEvent::Output { stderr, bytes } => self.output.write(stderr, &bytes),
                    CallEvent::Dropped(count) => self.output.dropped(count),
                    CallEvent::Finished(Some(remote)) => {
                        return Some(error(remote_error(&remote, None, span)));
                    }
                    CallEvent::Started { .. } | CallEvent::Finished(None) => {}
                },
                Err(e) => {
                    self.receives.pop_front();
                    return Some(error(client_error(&e, span)));
                }
            }
        }
    }
}
