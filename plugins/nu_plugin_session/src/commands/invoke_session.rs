use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nu_plugin::{EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::{
    Example, HandlerGuard, LabeledError, ListStream, PipelineData, ShellError, SignalAction,
    Signature, Span, SyntaxShape, Type, Value,
};
use nu_session_client::{Call, CallEvent, ClientError, SessionHandle};

use super::category;
use crate::SessionPlugin;
use crate::code::Code;
use crate::errors::{client_error, remote_error};
use crate::select::Criteria;
use crate::sessions::SessionState;

pub struct InvokeSession;

impl PluginCommand for InvokeSession {
    type Plugin = SessionPlugin;

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

    fn signature(&self) -> Signature {
        Signature::build(self.name())
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
            .named(
                "throttle-limit",
                SyntaxShape::Int,
                "How many sessions run the code at once (default 32); the next starts as one ends.",
                None,
            )
            .switch(
                "disconnected",
                "Start the code and disconnect at once; its output waits on the host for receive-session.",
                None,
            )
            .category(category())
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

    fn run(
        &self,
        plugin: &SessionPlugin,
        engine: &EngineInterface,
        call: &EvaluatedCall,
        input: PipelineData,
    ) -> Result<PipelineData, LabeledError> {
        let head = call.head;
        let target: Value = call.req(0)?;
        let code_value: Value = call.req(1)?;
        let args_span = call.get_flag_span("args").unwrap_or(head);
        let args = call.get_flag::<Vec<Value>>("args")?.unwrap_or_default();
        let code = Arc::new(Code::new(engine, &code_value, args, args_span)?);
        let code_span = code_value.span();

        let mut criteria = Criteria::default();
        criteria.add_value(target)?;
        let ids = criteria.select(&plugin.sessions())?;
        if ids.is_empty() {
            return Ok(PipelineData::empty());
        }
        let input = match input {
            PipelineData::Empty => None,
            other => Some(other.into_value(head)?),
        };

        let throttle = super::throttle_limit(call)?;

        if call.has_flag("disconnected")? {
            return start_disconnected(plugin, engine, &ids, &code, input, head);
        }

        // Every session is looked up now; the code starts in the first `throttle` of them, and in
        // the next each time one finishes. Results are read session by session, in order.
        let mut pending: VecDeque<Result<Target, LabeledError>> =
            ids.iter().map(|id| lookup(plugin, *id, head)).collect();
        let interrupters = Interrupters::default();
        let guard = {
            let interrupters = interrupters.clone();
            engine.register_signal_handler(Box::new(move |action| {
                if action == SignalAction::Interrupt {
                    interrupters.interrupt_all();
                }
            }))?
        };
        let output = OutputSink::new(engine);
        let starter = Starter {
            engine: engine.clone(),
            code,
            input,
            head,
            code_span,
            interrupters,
        };

        if pending.len() == 1
            && let Some(target) = pending.pop_front()
        {
            let mut run = starter.start(target?)?;
            run.guard = Some(guard);
            return run.into_pipeline(&output, engine);
        }
        let mut iter = Results {
            running: VecDeque::new(),
            pending,
            limit: throttle,
            starter,
            output,
            _guard: guard,
        };
        iter.top_up();
        let stream = std::iter::from_fn(move || iter.next_value());
        Ok(PipelineData::list_stream(
            ListStream::new(stream, head, engine.signals().clone()),
            None,
        ))
    }
}

/// `--disconnected`: sends the code to every session and disconnects it; returns the records.
fn start_disconnected(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    ids: &[i64],
    code: &Code,
    input: Option<Value>,
    head: Span,
) -> Result<PipelineData, LabeledError> {
    let rows = ids
        .iter()
        .map(|id| {
            if let Some(session) = plugin.sessions().get(*id).filter(|s| s.interactive) {
                return Err(crate::errors::in_enter_session(session, head));
            }
            let target = lookup(plugin, *id, head)?;
            target
                .handle
                .invoke_detached(code.source.clone(), code.bindings.clone(), input.clone())
                .map_err(|e| client_error(&e, head))?;
            let info = target
                .handle
                .disconnect(None, None)
                .map_err(|e| client_error(&e, head))?;
            let mut table = plugin.sessions();
            let session = table
                .get_mut(*id)
                .ok_or_else(|| LabeledError::new(format!("no session with id {id}")))?;
            session.detached(&info);
            Ok(crate::record::session_record(session, head))
        })
        .collect();
    plugin.keep_alive(engine);
    Ok(PipelineData::value(super::rows_or_error(rows, head)?, None))
}

fn not_opened(session: &crate::sessions::Session, span: Span) -> LabeledError {
    LabeledError::new(format!(
        "session {} ({}) is {}, not Opened: it cannot run code",
        session.id,
        session.name,
        session.state().as_str()
    ))
    .with_label("this session", span)
    .with_help(match session.state() {
        SessionState::Closed => "the session was removed; open a new one with new-session",
        _ => "connect it first, or use another session",
    })
}

/// One invocation in one session.
struct Run {
    /// `None` once given up without interrupting (see [`Drop`]).
    call: Option<Call>,
    code: Arc<Code>,
    code_span: Span,
    head: Span,
    _busy: Busy,
    guard: Option<HandlerGuard>,
    done: bool,
    engine: EngineInterface,
}

impl Drop for Run {
    fn drop(&mut self) {
        // Dropped unfinished: the user stopped reading (`| first 3`), and the code is
        // interrupted (the call's own drop); or `nu` itself is gone (killed, its terminal
        // closed), and the code runs on in the session, its output kept for receive-session.
        if !self.done
            && self.engine.get_current_dir().is_err()
            && let Some(call) = self.call.take()
        {
            call.forget();
        }
    }
}

/// Marks a session busy while an invocation runs in it.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(counter: Arc<AtomicUsize>) -> Busy {
        counter.fetch_add(1, Ordering::SeqCst);
        Busy(counter)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session the code is to run in.
struct Target {
    handle: SessionHandle,
    running: Arc<AtomicUsize>,
}

fn lookup(plugin: &SessionPlugin, id: i64, head: Span) -> Result<Target, LabeledError> {
    let table = plugin.sessions();
    let session = table
        .get(id)
        .ok_or_else(|| LabeledError::new(format!("no session with id {id}")))?;
    match (&session.handle, session.state()) {
        (Some(handle), SessionState::Opened) => Ok(Target {
            handle: handle.clone(),
            running: session.running.clone(),
        }),
        _ => Err(not_opened(session, head)),
    }
}

/// Runs `code` in the session `id` as invoke-session runs it in one session, with no input:
/// the result is shaped as it would be locally, printed output goes to the terminal, and the
/// call's interrupter joins `interrupters` (for Ctrl-C). `enter-session` runs each line so.
pub(crate) fn invoke_one(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    id: i64,
    code: Code,
    code_span: Span,
    head: Span,
    interrupters: &Interrupters,
) -> Result<PipelineData, LabeledError> {
    let starter = Starter {
        engine: engine.clone(),
        code: Arc::new(code),
        input: None,
        head,
        code_span,
        interrupters: interrupters.clone(),
    };
    starter
        .start(lookup(plugin, id, head)?)?
        .into_pipeline(&OutputSink::new(engine), engine)
}

/// Ctrl-C goes to every invocation started so far.
#[derive(Clone, Default)]
pub(crate) struct Interrupters(Arc<Mutex<Vec<Interrupt>>>);

type Interrupt = Box<dyn Fn() + Send + Sync>;

impl Interrupters {
    fn add(&self, interrupt: impl Fn() + Send + Sync + 'static) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(interrupt));
    }

    pub(crate) fn interrupt_all(&self) {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().for_each(|interrupt| interrupt());
    }
}

/// Starts the code in a session.
struct Starter {
    engine: EngineInterface,
    code: Arc<Code>,
    input: Option<Value>,
    head: Span,
    code_span: Span,
    interrupters: Interrupters,
}

impl Starter {
    fn start(&self, target: Target) -> Result<Run, LabeledError> {
        let call = target
            .handle
            .invoke(
                self.code.source.clone(),
                self.code.bindings.clone(),
                self.input.clone(),
            )
            .map_err(|e| client_error(&e, self.head))?;
        self.interrupters.add(call.interrupter());
        Ok(Run {
            call: Some(call),
            code: self.code.clone(),
            code_span: self.code_span,
            head: self.head,
            _busy: Busy::new(target.running),
            guard: None,
            done: false,
            engine: self.engine.clone(),
        })
    }
}

/// Where a session's printed output goes: stderr, or stdout when stdout is the terminal (not
/// the plugin protocol).
#[derive(Clone, Copy)]
pub(crate) struct OutputSink {
    stdout_ok: bool,
}

impl OutputSink {
    pub(crate) fn new(engine: &EngineInterface) -> Self {
        OutputSink {
            stdout_ok: !engine.is_using_stdio(),
        }
    }

    /// Says that the host discarded older output (output buffering `Drop`).
    pub(crate) fn dropped(&self, count: u64) {
        self.write(
            true,
            format!(
                "warning: the session's output buffer was full: {count} older outputs were dropped (output buffering Drop)\n"
            )
            .as_bytes(),
        );
    }

    pub(crate) fn write(&self, stderr: bool, bytes: &[u8]) {
        if stderr || !self.stdout_ok {
            let _ = std::io::stderr().write_all(bytes);
        } else {
            let mut out = std::io::stdout();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
    }
}

impl Run {
    /// The next event that is not printed output.
    fn next_event(&mut self, output: &OutputSink) -> Result<CallEvent, ClientError> {
        let call = self.call.as_mut().ok_or_else(ClientError::lost)?;
        loop {
            match call.next_event()? {
                CallEvent::Output { stderr, bytes } => output.write(stderr, &bytes),
                CallEvent::Dropped(count) => output.dropped(count),
                event => return Ok(event),
            }
        }
    }

    fn error(&self, error: &nu_session_client::RemoteError) -> LabeledError {
        remote_error(error, Some(&self.code), self.code_span)
    }

    /// The result shaped as it would be locally: nothing, one value, or a stream.
    fn into_pipeline(
        mut self,
        output: &OutputSink,
        engine: &EngineInterface,
    ) -> Result<PipelineData, LabeledError> {
        let head = self.head;
        let lost = |e: ClientError| client_error(&e, head);
        match self.next_event(output).map_err(lost)? {
            CallEvent::Finished(Some(error)) => Err(self.error(&error)),
            CallEvent::Finished(None) => Ok(PipelineData::empty()),
            CallEvent::Started { stream: true } => {
                let output = *output;
                let stream = std::iter::from_fn(move || self.next_value(&output));
                Ok(PipelineData::list_stream(
                    ListStream::new(stream, head, engine.signals().clone()),
                    None,
                ))
            }
            CallEvent::Started { stream: false }
            | CallEvent::Output { .. }
            | CallEvent::Dropped(_) => {
                let mut result = PipelineData::empty();
                loop {
                    match self.next_event(output).map_err(lost)? {
                        CallEvent::Value(value) => {
                            result = PipelineData::value(local_value(value, head), None)
                        }
                        CallEvent::Finished(None) => return Ok(result),
                        CallEvent::Finished(Some(error)) => return Err(self.error(&error)),
                        CallEvent::Started { .. }
                        | CallEvent::Output { .. }
                        | CallEvent::Dropped(_) => {}
                    }
                }
            }
            CallEvent::Value(value) => Ok(PipelineData::value(local_value(value, head), None)),
        }
    }

    /// The next value of a streaming result; errors become error values.
    fn next_value(&mut self, output: &OutputSink) -> Option<Value> {
        if self.done {
            return None;
        }
        loop {
            match self.next_event(output) {
                Ok(CallEvent::Value(value)) => return Some(local_value(value, self.head)),
                Ok(
                    CallEvent::Started { .. } | CallEvent::Output { .. } | CallEvent::Dropped(_),
                ) => {}
                Ok(CallEvent::Finished(None)) => {
                    self.done = true;
                    return None;
                }
                Ok(CallEvent::Finished(Some(error))) => {
                    self.done = true;
                    return Some(Value::error(
                        ShellError::LabeledError(Box::new(self.error(&error))),
                        self.head,
                    ));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Value::error(
                        ShellError::LabeledError(Box::new(client_error(&e, self.head))),
                        self.head,
                    ));
                }
            }
        }
    }
}

/// The values of several sessions, one session after the other; a session that could not run
/// the code contributes its error.
struct Results {
    /// Started (or failed to start), in order; at most `limit` long.
    running: VecDeque<Result<Run, LabeledError>>,
    /// Not started yet, in order.
    pending: VecDeque<Result<Target, LabeledError>>,
    limit: usize,
    starter: Starter,
    output: OutputSink,
    /// Keeps Ctrl-C forwarded while the results are read.
    _guard: HandlerGuard,
}

impl Results {
    fn top_up(&mut self) {
        while self.running.len() < self.limit
            && let Some(target) = self.pending.pop_front()
        {
            self.running
                .push_back(target.and_then(|t| self.starter.start(t)));
        }
    }

    fn next_value(&mut self) -> Option<Value> {
        loop {
            self.top_up();
            match self.running.front_mut()? {
                Err(_) => {
                    let Some(Err(error)) = self.running.pop_front() else {
                        continue;
                    };
                    let span = error.labels.first().map_or(Span::unknown(), |l| l.span);
                    return Some(Value::error(
                        ShellError::LabeledError(Box::new(error)),
                        span,
                    ));
                }
                Ok(run) => match run.next_value(&self.output) {
                    Some(value) => return Some(value),
                    None => {
                        self.running.pop_front();
                    }
                },
            }
        }
    }
}

/// Values from a session get the span of this call: their own spans point into the session's
/// sources.
pub(crate) fn local_value(mut value: Value, span: Span) -> Value {
    let _ = value.recurse_mut(&mut |v: &mut Value| {
        v.set_span(span);
        Ok::<_, std::convert::Infallible>(())
    });
    value
}
