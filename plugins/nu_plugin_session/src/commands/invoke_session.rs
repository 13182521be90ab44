use std::sync::Arc;

use nu_protocol::{Example, LabeledError, PipelineData, Signature, Span, SyntaxShape, Type, Value};

use super::SessionCommand;
use crate::code::Code;
use crate::errors::{client_error, in_enter_session, no_session};
use crate::invocation::output::OutputSink;
use crate::invocation::{Interrupters, Starter, lookup, many};
use crate::select::{Criteria, Reported};
use crate::{Cx, SessionPlugin, flags};

pub struct InvokeSession;

impl SessionCommand for InvokeSession {
    fn name(&self) -> &str {
        "invoke-session"
    }

    fn description(&self) -> &str {
        "Run code in sessions and stream back the values it produces."
    }

    fn extra_description(&self) -> &str {
        "The code runs at the session's top level: variables, definitions, aliases, environment and \
         working directory persist from one invocation to the next. A closure's captured variables \
         travel with it, --args fills its parameters, and pipeline input becomes $in. The result \
         has the shape it would have locally: a single value stays a value, a stream a stream."
    }

    fn signature(&self, base: Signature) -> Signature {
        let signature = base
            .input_output_types(vec![(Type::Any, Type::Any)])
            .required(
                "session",
                SyntaxShape::Any,
                "The sessions: an id, a list of ids, a session record or a table of them.",
            )
            .required(
                "code",
                SyntaxShape::OneOf(vec![SyntaxShape::Closure(None), SyntaxShape::String]),
                "The code to run: a closure, or a string of Nushell source.",
            )
            .named(
                "args",
                SyntaxShape::List(Box::new(SyntaxShape::Any)),
                "Values for the closure's parameters.",
                Some('a'),
            )
            .switch(
                "disconnected",
                "Start the code and disconnect at once; its output waits on the host for receive-session.",
                None,
            )
            .switch(
                "by-session",
                "Return one record per session (id, name, computer_name, output, error, duration), with errors as data.",
                None,
            );
        flags::declare_throttle(signature, "run the code in")
    }

    fn search_terms(&self) -> Vec<&str> {
        vec!["invoke-command", "icm", "remote", "run", "execute"]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        vec![
            Example {
                example: "let s = new-session; invoke-session $s { 1 + 1 }",
                description: "Run a closure in a session",
                result: Some(Value::test_int(2)),
            },
            Example {
                example: "let s = new-session; invoke-session $s { let x = 21 }; invoke-session $s '$x * 2'",
                description: "Variables persist in the session; refer to one that exists only there from a string (nu checks a closure's variables before sending it)",
                result: Some(Value::test_int(42)),
            },
            Example {
                example: "let n = 5; invoke-session (new-session) { $n * 2 }",
                description: "Captured local variables travel with the closure",
                result: Some(Value::test_int(10)),
            },
            Example {
                example: "invoke-session (new-session) {|a, b| $a + $b } --args [3 4]",
                description: "Pass the closure's parameters",
                result: Some(Value::test_int(7)),
            },
            Example {
                example: "[1 2 3] | invoke-session (new-session) { $in | math sum }",
                description: "Pipeline input becomes $in",
                result: Some(Value::test_int(6)),
            },
            Example {
                example: "let s = new-session; let t = new-session; invoke-session [$s.0.id $t.0.id] --by-session { 6 * 7 } | select output error",
                description: "Run code in several sessions and get one record per session, errors as data",
                result: Some(Value::test_list(vec![
                    Value::test_record(nu_protocol::record! {
                        "output" => Value::test_int(42), "error" => Value::test_nothing(),
                    }),
                    Value::test_record(nu_protocol::record! {
                        "output" => Value::test_int(42), "error" => Value::test_nothing(),
                    }),
                ])),
            },
            Example {
                example: "invoke-session (new-session) '1..3 | each { $in * 10 }'",
                description: "Run a string of source; a stream comes back as a stream",
                result: Some(Value::test_list(vec![
                    Value::test_int(10),
                    Value::test_int(20),
                    Value::test_int(30),
                ])),
            },
        ]
    }

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let (plugin, engine, call, head) = (cx.plugin, cx.engine, cx.call, cx.span);
        let target: Value = call.req(0)?;
        let code_value: Value = call.req(1)?;
        let args_span = call.get_flag_span("args").unwrap_or(head);
        let args = call.get_flag::<Vec<Value>>("args")?.unwrap_or_default();
        let code = Arc::new(Code::new(engine, &code_value, args, args_span)?);
        let code_span = code_value.span();

        let mut criteria = Criteria::default();
        criteria.add_value(target)?;
        let ids = criteria.select(&plugin.sessions(), &Reported::default())?;
        let by_session = call.has_flag("by-session")?;
        if ids.is_empty() {
            return Ok(match by_session {
                true => PipelineData::value(Value::list(vec![], head), None),
                false => PipelineData::empty(),
            });
        }
        let input = match input {
            PipelineData::Empty => None,
            other => Some(other.into_value(head)?),
        };
        let throttle = flags::throttle(call)?;

        if call.has_flag("disconnected")? {
            return start_disconnected(plugin, &ids, &code, input, head);
        }
        let interrupters = Interrupters::default();
        let guard = interrupters.on_ctrl_c(engine)?;
        let starter = Starter {
            engine: engine.clone(),
            code,
            input,
            head,
            code_span,
            interrupters,
        };
        if by_session {
            let rows = many::by_session(plugin, engine, &ids, &starter, throttle);
            drop(guard);
            return Ok(PipelineData::value(rows, None));
        }
        if let [id] = ids.as_slice() {
            let mut run = starter.start(lookup(plugin, *id, head)?)?;
            run.keep(guard);
            return run.into_pipeline(&OutputSink::new(engine), engine);
        }
        Ok(many::stream(plugin, engine, &ids, starter, throttle, guard))
    }
}

/// `--disconnected`: sends the code to every session and disconnects it; returns the records.
fn start_disconnected(
    plugin: &SessionPlugin,
    ids: &[i64],
    code: &Code,
    input: Option<Value>,
    head: Span,
) -> Result<PipelineData, LabeledError> {
    let rows = ids
        .iter()
        .map(|id| {
            if let Some(session) = plugin.sessions().get(*id).filter(|s| s.interactive) {
                return (
                    crate::fanout::who(plugin, *id),
                    Err(in_enter_session(session, head)),
                );
            }
            let row = lookup(plugin, *id, head).and_then(|target| {
                let handle = target.handle();
                handle
                    .invoke_detached(code.source.clone(), code.bindings.clone(), input.clone())
                    .map_err(|e| client_error(&e, head))?;
                let info = handle
                    .disconnect(None, None)
                    .map_err(|e| client_error(&e, head))?;
                let mut table = plugin.sessions();
                let session = table.get_mut(*id).ok_or_else(|| no_session(*id, head))?;
                session.detached(&info);
                Ok(crate::record::session_record(session, head))
            });
            (crate::fanout::who(plugin, *id), row)
        })
        .collect();
    Ok(PipelineData::value(crate::fanout::rows(rows, head)?, None))
}
