//! A list stream result, delivered the fastest way that keeps its latency.
//!
//! Nushell's plugin protocol sends a returned `ListStream` one flushed message per value, each
//! acknowledged by the engine: a few microseconds a value, which for a bulk result costs more
//! than everything else together. A returned list is one message. So a stream is first read for
//! a moment: while its values keep coming (each within [`GAP`] of the last) and it is young
//! ([`SETTLE`]) and small ([`SETTLE_BYTES`]), they are held; when it finishes meanwhile, the
//! result is a list, delivered whole. When it pauses (a slow producer: its first value must be
//! shown at once), or outgrows the moment, it becomes a stream, starting with what was held.
//! Ctrl-C reaches the remote code at any time; `| first 3` stops it once it streams.

use std::time::{Duration, Instant};

use nu_plugin::EngineInterface;
use nu_protocol::{ListStream, PipelineData, ShellError, Value};
use nu_session_client::CallEvent;

use super::output::OutputSink;
use super::{Run, local_value};
use crate::errors::client_error;

/// A pause this long between values means a slow producer: stream.
const GAP: Duration = Duration::from_millis(20);

/// The longest a result is held to be delivered whole.
const SETTLE: Duration = Duration::from_secs(1);

/// The most a result holds (by its values' weight) to be delivered whole.
const SETTLE_BYTES: usize = 128 * 1024 * 1024;

/// The result of `run`, whose `Started` said it is a stream.
pub(super) fn result(mut run: Run, output: OutputSink, engine: &EngineInterface) -> PipelineData {
    let head = run.head;
    let started = Instant::now();
    let mut held = Vec::new();
    let mut weight = 0;
    let whole = loop {
        if started.elapsed() >= SETTLE || weight >= SETTLE_BYTES {
            break false;
        }
        let Some(call) = run.call.as_mut() else {
            break false;
        };
        let event = match call.next_event_within(GAP) {
            Ok(Some(event)) => event,
            Ok(None) => break false,
            Err(e) => {
                run.done = true;
                held.push(Value::error(
                    ShellError::LabeledError(Box::new(client_error(&e, head))),
                    head,
                ));
                break false;
            }
        };
        match event {
            CallEvent::Value(value) => {
                weight += nu_session_client::value_weight(&value);
                held.push(local_value(value, head));
            }
            CallEvent::Finished(None) => {
                run.done = true;
                break true;
            }
            CallEvent::Finished(Some(error)) => {
                run.done = true;
                held.push(Value::error(
                    ShellError::LabeledError(Box::new(run.error(&error))),
                    head,
                ));
                break false;
            }
            CallEvent::Output { stderr, bytes } => output.write(stderr, &bytes),
            CallEvent::Dropped(count) => output.dropped(count),
            CallEvent::Started { .. } | CallEvent::Bytes(_) => {}
        }
    };
    if whole {
        return PipelineData::value(Value::list(held, head), None);
    }
    let mut held = held.into_iter();
    let stream = std::iter::from_fn(move || held.next().or_else(|| run.next_value(&output)));
    PipelineData::list_stream(
        ListStream::new(stream, head, engine.signals().clone()),
        None,
    )
}
