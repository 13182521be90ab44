use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nu_protocol::{
    Example, LabeledError, ListStream, PipelineData, ShellError, Signature, Span, Type, Value,
    value_from_bytes,
};
use nu_session_client::{BytesKind, CallEvent, Handover, Next, Receive};

use super::SessionCommand;
use crate::delivery::{self, Delivery, Follower};
use crate::errors::{client_error, many_failed, named, remote_error};
use crate::fanout::who;
use crate::invocation::list::Polled;
use crate::invocation::local_value;
use crate::invocation::output::OutputSink;
use crate::select::{ASK_A_HOST, Need, select, selection_signature};
use crate::{Cx, SessionPlugin, flags, operations};

pub struct ReceiveSession;

const NEED: Need = Need::sessions("no sessions to receive from", ASK_A_HOST).discovering();

impl SessionCommand for ReceiveSession {
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

    fn signature(&self, base: Signature) -> Signature {
        flags::declare_ssh(selection_signature(base))
            .input_output_types(vec![(Type::Any, Type::Any)])
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

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let Cx {
            plugin,
            engine,
            span,
            ..
        } = *cx;
        let selected = select(cx, input, NEED)?.or_lone_failure()?;
        let lone = selected.ids.len() == 1 && selected.unreachable.is_empty();
        let followed = Arc::new(Followed::default());
        let mut receives = VecDeque::new();
        for id in &selected.ids {
            let receive = start(plugin, *id, span).map(|mut receive| {
                let handover = receive.follow();
                lock(&followed.all).push(handover.clone());
                (receive, handover)
            });
            // One session: its connection error is the command's error.
            if lone {
                receives.push_back((who(plugin, *id), Ok(receive?)));
            } else {
                receives.push_back((who(plugin, *id), receive));
            }
        }
        let failures = selected.failures();
        let values = Values {
            total: receives.len() + failures.len(),
            receives,
            failures,
            lone,
            output: OutputSink::new(engine),
            span,
            bytes: None,
            followed: followed.clone(),
        };
        // Always a stream, never one list: `nu` says which values its consumer took, so that
        // what a `| first 3` left stays on the host for the next receive.
        let delivery = Delivery::new(followed);
        let stream = stream(values, delivery.clone());
        delivery::returning(delivery);
        Ok(PipelineData::list_stream(
            ListStream::new(stream, span, engine.signals().clone()),
            None,
        ))
    }
}

/// The values of `values` as `nu` pulls them, each one's receive told when `nu` took it (or, not
/// followed, when handed on); ends when `nu` stops reading.
fn stream(mut values: Values, delivery: Arc<Delivery>) -> impl Iterator<Item = Value> + Send {
    std::iter::from_fn(move || {
        loop {
            if delivery.stopped() {
                return None;
            }
            values.followed.apply();
            match values.poll(Duration::from_millis(100)) {
                Polled::Value(value) => {
                    if !delivery.followed() {
                        delivery.taken();
                    }
                    return Some(value);
                }
                Polled::Done => {
                    values.followed.apply();
                    return None;
                }
                Polled::Waiting => {}
            }
        }
    })
}

/// The receives whose values are on their way to `nu`: one per value handed on, oldest first
/// (`None` for a value of no receive: an error), told in order as `nu` takes them. `nu`'s
/// acknowledgements are only counted as they come (one per value: a million for a million
/// values); the producer tells the receives in batches ([`Followed::apply`]).
#[derive(Default)]
struct Followed {
    pending: Mutex<VecDeque<Option<Handover>>>,
    all: Mutex<Vec<Handover>>,
    taken: AtomicUsize,
}

impl Followed {
    fn handed_on(&self, handover: Option<&Handover>) {
        lock(&self.pending).push_back(handover.cloned());
    }

    /// Tells the receives what `nu` took since the last time.
    fn apply(&self) {
        let count = self.taken.swap(0, Ordering::SeqCst);
        if count == 0 {
            return;
        }
        let taken: Vec<_> = {
            let mut pending = lock(&self.pending);
            let count = count.min(pending.len());
            pending.drain(..count).collect()
        };
        // Runs of the same receive, told at once.
        let mut run: Option<(Handover, usize)> = None;
        for handover in taken.into_iter().flatten() {
            match &mut run {
                Some((current, n)) if current.same(&handover) => *n += 1,
                _ => {
                    if let Some((current, n)) = run.replace((handover, 1)) {
                        current.taken(n);
                    }
                }
            }
        }
        if let Some((current, n)) = run {
            current.taken(n);
        }
    }
}

impl Follower for Arc<Followed> {
    fn taken(&self) {
        self.taken.fetch_add(1, Ordering::SeqCst);
    }

    fn stopped(&self) {
        self.apply();
        lock(&self.pending).clear();
        for handover in lock(&self.all).drain(..) {
            handover.stopped();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects the session when needed and starts receiving its backlog.
fn start(plugin: &SessionPlugin, id: i64, span: Span) -> Result<Receive, LabeledError> {
    operations::connect(plugin, id, span)?;
    let table = plugin.sessions();
    let handle = table
        .get(id)
        .and_then(|s| s.handle.clone())
        .ok_or_else(|| LabeledError::new(format!("session {id} has no connection")))?;
    handle.receive().map_err(|e| client_error(&e, span))
}

/// A session's receive and the handle that says what `nu` took of it.
type Following = (Receive, Handover);

/// The values of the sessions' backlogs, one session after the other. With one session, an
/// error is a value where it happened; with several, the failures come after every value, as
/// one error named after the sessions.
struct Values {
    receives: VecDeque<(String, Result<Following, LabeledError>)>,
    failures: Vec<LabeledError>,
    total: usize,
    lone: bool,
    output: OutputSink,
    span: Span,
    /// The byte stream result being received, whole.
    bytes: Option<(BytesKind, Vec<u8>)>,
    followed: Arc<Followed>,
}

impl Values {
    fn fail(&mut self, error: LabeledError) -> Option<Value> {
        let who = self.receives.pop_front().map(|(who, _)| who);
        if self.lone {
            return Some(Value::error(
                ShellError::LabeledError(Box::new(error)),
                self.span,
            ));
        }
        self.failures
            .push(named(error, who.as_deref().unwrap_or("a session")));
        None
    }

    /// A value of the current receive is handed on: what it took so far makes it.
    fn mine(&mut self, value: Value) -> Polled {
        if let Some((_, Ok((receive, handover)))) = self.receives.front_mut() {
            receive.handed_out();
            self.followed.handed_on(Some(handover));
        }
        Polled::Value(value)
    }

    /// A value of no receive (an error) is handed on.
    fn other(&mut self, value: Value) -> Polled {
        self.followed.handed_on(None);
        Polled::Value(value)
    }

    /// The next value if one comes within `wait`.
    fn poll(&mut self, wait: Duration) -> Polled {
        let span = self.span;
        loop {
            let Some((_, receive)) = self.receives.front_mut() else {
                if self.failures.is_empty() {
                    return Polled::Done;
                }
                let error = many_failed(std::mem::take(&mut self.failures), self.total, "sessions");
                return self.other(Value::error(
                    ShellError::LabeledError(Box::new(error)),
                    span,
                ));
            };
            let receive = match receive {
                Ok((receive, _)) => receive,
                Err(error) => {
                    let error = error.clone();
                    if let Some(value) = self.fail(error) {
                        return self.other(value);
                    }
                    continue;
                }
            };
            match receive.next_event_within(wait) {
                Ok(Next::Waiting) => return Polled::Waiting,
                Ok(Next::End) => {
                    self.receives.pop_front();
                }
                Ok(Next::Event((_, event))) => match event {
                    CallEvent::Value(value) => return self.mine(local_value(value, span)),
                    CallEvent::Output { stderr, bytes } => self.output.write(stderr, &bytes),
                    CallEvent::Dropped(count) => self.output.dropped(count),
                    CallEvent::Finished(Some(remote)) => {
                        self.bytes = None;
                        if self.lone {
                            return self.mine(Value::error(
                                ShellError::LabeledError(Box::new(remote_error(
                                    &remote, None, span,
                                ))),
                                span,
                            ));
                        }
                        let who = self.receives.front().map(|(who, _)| who.clone());
                        self.failures.push(named(
                            remote_error(&remote, None, span),
                            who.as_deref().unwrap_or("a session"),
                        ));
                    }
                    CallEvent::Started {
                        bytes: Some(kind), ..
                    } => self.bytes = Some((kind, Vec::new())),
                    CallEvent::Bytes(bytes) => {
                        if let Some((_, held)) = &mut self.bytes {
                            held.extend_from_slice(&bytes);
                        }
                    }
                    CallEvent::Finished(None) => {
                        // A byte stream result is received as one value, as `collect` makes it.
                        if let Some((kind, bytes)) = self.bytes.take() {
                            return self.mine(value_from_bytes(bytes, span, kind.into(), false));
                        }
                    }
                    CallEvent::Started { .. } => {}
                },
                Err(e) => {
                    if let Some(value) = self.fail(client_error(&e, span)) {
                        return self.other(value);
                    }
                }
            }
        }
    }
}
