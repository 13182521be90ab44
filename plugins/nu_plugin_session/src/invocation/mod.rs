//! Running code in sessions, for `invoke-session`, `enter-session` and `receive-session`:
//!
//! - here: one invocation in one session ([`Run`]), its result shaped as it would be locally
//!   (nothing, one value, a list stream, or a byte stream), errors pointing into the user's code, Ctrl-C forwarded
//!   ([`Interrupters`]), the session marked busy meanwhile;
//! - [`many`]: the same code in several sessions (a fan-out): streamed session by session with
//!   the failures raised at the end, or one record per session (`--by-session`);
//! - [`output`]: where what the session prints goes.

mod bytes;
pub mod list;
pub mod many;
pub mod output;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nu_plugin::EngineInterface;
use nu_protocol::{HandlerGuard, LabeledError, PipelineData, ShellError, Span, Value};
use nu_session_client::{BytesKind, Call, CallEvent, ClientError, RemoteError, SessionHandle};

use crate::SessionPlugin;
use crate::code::Code;
use crate::errors::{Action, client_error, no_session, remote_error, wrong_state};
use crate::sessions::SessionState;
use output::OutputSink;

/// A session the code is to run in.
pub struct Runnable {
    handle: SessionHandle,
    running: Arc<AtomicUsize>,
}

impl Runnable {
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }
}

/// The session `id`, if it can run code now (Opened); else why not.
pub fn lookup(plugin: &SessionPlugin, id: i64, head: Span) -> Result<Runnable, LabeledError> {
    let table = plugin.sessions();
    let session = table.get(id).ok_or_else(|| no_session(id, head))?;
    match (&session.handle, session.state()) {
        (Some(handle), SessionState::Opened) => Ok(Runnable {
            handle: handle.clone(),
            running: session.running.clone(),
        }),
        _ => Err(wrong_state(session, Action::Run, head)),
    }
}

/// Runs `code` in the session `id` as invoke-session runs it in one session, with no input:
/// the result is shaped as it would be locally, printed output goes to the terminal, and the
/// call's interrupter joins `interrupters` (for Ctrl-C). `enter-session` runs each line so.
pub fn invoke_one(
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
pub struct Interrupters(Arc<Mutex<Vec<Interrupt>>>);

type Interrupt = Box<dyn Fn() + Send + Sync>;

impl Interrupters {
    fn add(&self, interrupt: impl Fn() + Send + Sync + 'static) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(interrupt));
    }

    pub fn interrupt_all(&self) {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().for_each(|interrupt| interrupt());
    }

    /// Forwards the engine's Ctrl-C to these interrupters while the guard lives.
    pub fn on_ctrl_c(&self, engine: &EngineInterface) -> Result<HandlerGuard, LabeledError> {
        let interrupters = self.clone();
        Ok(engine.register_signal_handler(Box::new(move |action| {
            if action == nu_protocol::SignalAction::Interrupt {
                interrupters.interrupt_all();
            }
        }))?)
    }
}

/// Starts the code in sessions.
pub struct Starter {
    pub engine: EngineInterface,
    pub code: Arc<Code>,
    pub input: Option<Value>,
    pub head: Span,
    pub code_span: Span,
    pub interrupters: Interrupters,
}

impl Starter {
    pub fn start(&self, target: Runnable) -> Result<Run, LabeledError> {
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

/// One invocation in one session.
pub struct Run {
    /// `None` once given up without interrupting (see [`Drop`]).
    call: Option<Call>,
    code: Arc<Code>,
    code_span: Span,
    head: Span,
    _busy: Busy,
    /// Keeps Ctrl-C forwarded while a lone invocation's stream is read.
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

/// A wait with no end in practice (the call's own checks still run every few ms).
const FOREVER: Duration = Duration::from_secs(3600);

/// What [`Run::step`] found.
enum Step {
    Event(CallEvent),
    Done,
    Waiting,
    Failed(LabeledError),
}

/// What [`Run::next_piece`] found.
enum Piece {
    Bytes(Vec<u8>),
    End,
    Waiting,
}

/// A run whose result streams, as [`list::deliver`] reads it.
struct Streaming {
    run: Run,
    output: OutputSink,
}

impl list::Source for Streaming {
    fn poll(&mut self, wait: Duration) -> list::Polled {
        self.run.poll(&self.output, wait)
    }

    fn defer_acks(&mut self, defer: bool) {
        if let Some(call) = self.run.call.as_mut() {
            call.defer_acks(defer);
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

/// What an invocation produced, taken whole (for `--by-session`).
pub struct Collected {
    /// Nothing, its value, or the list of a stream's values.
    pub output: Value,
    pub error: Option<LabeledError>,
}

impl Run {
    /// Keeps Ctrl-C forwarded for as long as this run's result is read.
    pub fn keep(&mut self, guard: HandlerGuard) {
        self.guard = Some(guard);
    }

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

    fn error(&self, error: &RemoteError) -> LabeledError {
        remote_error(error, Some(&self.code), self.code_span)
    }

    /// The result shaped as it would be locally: nothing, one value, or a stream.
    pub fn into_pipeline(
        mut self,
        output: &OutputSink,
        engine: &EngineInterface,
    ) -> Result<PipelineData, LabeledError> {
        let head = self.head;
        let lost = |e: ClientError| client_error(&e, head);
        match self.next_event(output).map_err(lost)? {
            CallEvent::Finished(Some(error)) => Err(self.error(&error)),
            CallEvent::Finished(None) => Ok(PipelineData::empty()),
            CallEvent::Started {
                bytes: Some(kind), ..
            } => bytes::result(self, *output, engine, kind),
            CallEvent::Started { stream: true, .. } => {
                let signals = engine.signals().clone();
                let source = Streaming {
                    run: self,
                    output: *output,
                };
                Ok(list::deliver(source, head, signals))
            }
            CallEvent::Started { stream: false, .. } => match self.single(output)? {
                Value::Nothing { .. } => Ok(PipelineData::empty()),
                value => Ok(PipelineData::value(value, None)),
            },
            CallEvent::Value(value) => Ok(PipelineData::value(local_value(value, head), None)),
            CallEvent::Output { .. } | CallEvent::Dropped(_) | CallEvent::Bytes(_) => {
                Ok(PipelineData::empty())
            }
        }
    }

    /// A byte stream result taken whole, as Nushell collects one: text when it is (or may be)
    /// text and valid UTF-8, else binary.
    fn gather_bytes(&mut self, output: &OutputSink, kind: BytesKind) -> Result<Value, ShellError> {
        let mut bytes = Vec::new();
        loop {
            match self.next_piece(output, FOREVER) {
                Ok(Piece::Bytes(piece)) => bytes.extend_from_slice(&piece),
                Ok(Piece::End) => {
                    return Ok(nu_protocol::value_from_bytes(
                        bytes,
                        self.head,
                        kind.into(),
                        false,
                    ));
                }
                Ok(Piece::Waiting) => {}
                Err(error) => return Err(ShellError::LabeledError(Box::new(error))),
            }
        }
    }

    /// The next event of the result that is not printed output, if one comes within `wait`.
    /// Its end is [`Step::Done`], its error (or a lost connection) [`Step::Failed`]; either way
    /// the run is done.
    fn step(&mut self, output: &OutputSink, wait: Duration) -> Step {
        loop {
            if self.done {
                return Step::Done;
            }
            let Some(call) = self.call.as_mut() else {
                return Step::Done;
            };
            match call.next_event_within(wait) {
                Ok(None) => return Step::Waiting,
                Ok(Some(CallEvent::Output { stderr, bytes })) => output.write(stderr, &bytes),
                Ok(Some(CallEvent::Dropped(count))) => output.dropped(count),
                Ok(Some(CallEvent::Finished(error))) => {
                    self.done = true;
                    return match error {
                        None => Step::Done,
                        Some(error) => Step::Failed(self.error(&error)),
                    };
                }
                Ok(Some(event)) => return Step::Event(event),
                Err(e) => {
                    self.done = true;
                    return Step::Failed(client_error(&e, self.head));
                }
            }
        }
    }

    /// The next piece of a byte stream result, if one comes within `wait`.
    fn next_piece(&mut self, output: &OutputSink, wait: Duration) -> Result<Piece, LabeledError> {
        loop {
            match self.step(output, wait) {
                Step::Event(CallEvent::Bytes(bytes)) => return Ok(Piece::Bytes(bytes)),
                Step::Event(_) => {}
                Step::Done => return Ok(Piece::End),
                Step::Waiting => return Ok(Piece::Waiting),
                Step::Failed(error) => return Err(error),
            }
        }
    }

    /// The one value of a result that is not a stream (nothing if it has none).
    fn single(&mut self, output: &OutputSink) -> Result<Value, LabeledError> {
        let head = self.head;
        let mut result = Value::nothing(head);
        loop {
            match self
                .next_event(output)
                .map_err(|e| client_error(&e, head))?
            {
                CallEvent::Value(value) => result = local_value(value, head),
                CallEvent::Finished(None) => {
                    self.done = true;
                    return Ok(result);
                }
                CallEvent::Finished(Some(error)) => {
                    self.done = true;
                    return Err(self.error(&error));
                }
                CallEvent::Started { .. }
                | CallEvent::Output { .. }
                | CallEvent::Dropped(_)
                | CallEvent::Bytes(_) => {}
            }
        }
    }

    /// The next value of a streaming result if it comes within `wait`; errors become error
    /// values. Among other values (several sessions), a byte stream result is one value.
    fn poll(&mut self, output: &OutputSink, wait: Duration) -> list::Polled {
        let failed = |error: ShellError, head| list::Polled::Value(Value::error(error, head));
        loop {
            match self.step(output, wait) {
                Step::Event(CallEvent::Value(value)) => {
                    return list::Polled::Value(local_value(value, self.head));
                }
                Step::Event(CallEvent::Started {
                    bytes: Some(kind), ..
                }) => {
                    return match self.gather_bytes(output, kind) {
                        Ok(value) => list::Polled::Value(value),
                        Err(error) => failed(error, self.head),
                    };
                }
                Step::Event(_) => {}
                Step::Done => return list::Polled::Done,
                Step::Waiting => return list::Polled::Waiting,
                Step::Failed(error) => {
                    return failed(ShellError::LabeledError(Box::new(error)), self.head);
                }
            }
        }
    }

    /// The next value of a streaming result; errors become error values.
    pub fn next_value(&mut self, output: &OutputSink) -> Option<Value> {
        loop {
            match self.poll(output, FOREVER) {
                list::Polled::Value(value) => return Some(value),
                list::Polled::Done => return None,
                list::Polled::Waiting => {}
            }
        }
    }

    /// Everything the invocation produces, as one value (a list for a stream), and its error.
    pub fn collect(mut self, output: &OutputSink) -> Collected {
        let head = self.head;
        let first = match self.next_event(output) {
            Ok(event) => event,
            Err(e) => {
                return Collected {
                    output: Value::nothing(head),
                    error: Some(client_error(&e, head)),
                };
            }
        };
        match first {
            CallEvent::Started {
                bytes: Some(kind), ..
            } => match self.gather_bytes(output, kind) {
                Ok(value) => Collected {
                    output: value,
                    error: None,
                },
                Err(e) => Collected {
                    output: Value::nothing(head),
                    error: Some(LabeledError::from_diagnostic(&e)),
                },
            },
            CallEvent::Started { stream: true, .. } => {
                let mut values = Vec::new();
                let mut error = None;
                while let Some(value) = self.next_value(output) {
                    match value {
                        Value::Error { error: e, .. } => {
                            error = Some(LabeledError::from_diagnostic(&*e));
                            break;
                        }
                        value => values.push(value),
                    }
                }
                Collected {
                    output: Value::list(values, head),
                    error,
                }
            }
            CallEvent::Finished(error) => Collected {
                output: Value::nothing(head),
                error: error.map(|e| self.error(&e)),
            },
            _ => match self.single(output) {
                Ok(value) => Collected {
                    output: value,
                    error: None,
                },
                Err(error) => Collected {
                    output: Value::nothing(head),
                    error: Some(error),
                },
            },
        }
    }
}

/// Values from a session get the span of this call: their own spans point into the session's
/// sources.
pub fn local_value(mut value: Value, span: Span) -> Value {
    let _ = value.recurse_mut(&mut |v: &mut Value| {
        v.set_span(span);
        Ok::<_, std::convert::Infallible>(())
    });
    value
}
