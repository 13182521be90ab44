//! A list stream result, delivered the fastest way that keeps its latency.
//!
//! Nushell's plugin protocol sends a returned `ListStream` one flushed message per value, each
//! acknowledged by the engine: a few microseconds a value, which for a bulk result costs more
//! than everything else together. A returned list is one message. So a stream is first read for
//! a moment: while its values keep coming (each within [`GAP`] of the last, at least
//! [`MIN_RATE`] a second after [`RATE_AFTER`]) and it is young ([`SETTLE`]) and small
//! ([`SETTLE_BYTES`]), they are held, and not acknowledged to the host (a client killed
//! meanwhile loses none of them); when it finishes meanwhile, the
//! result is a list, delivered whole. When it pauses (a slow producer: its first value must be
//! shown at once), or outgrows the moment, it becomes a stream, starting with what was held.
//! Ctrl-C reaches the remote code at any time; `| first 3` stops it once it streams. Used by
//! invoke-session and receive-session.

use std::time::{Duration, Instant};

use nu_protocol::{ListStream, PipelineData, Signals, Span, Value};

/// A pause this long between values means a slow producer: stream. (A busy machine pauses a
/// fast one for some milliseconds now and then.)
const GAP: Duration = Duration::from_millis(50);

/// The longest a result is held to be delivered whole.
const SETTLE: Duration = Duration::from_secs(2);

/// After this long, a stream slower than [`MIN_RATE`] values a second streams: streaming it
/// costs little (the plugin protocol's few microseconds a value), and its values are seen.
const RATE_AFTER: Duration = Duration::from_millis(100);
const MIN_RATE: f64 = 20_000.0;

/// The most a result holds (by its values' weight) to be delivered whole.
const SETTLE_BYTES: usize = 128 * 1024 * 1024;

/// What a source of values had within a wait.
pub enum Polled {
    Value(Value),
    Done,
    Waiting,
}

/// Where the values come from: a call, or received backlogs.
pub trait Source: Send + 'static {
    /// The next value if it comes within `wait`.
    fn poll(&mut self, wait: Duration) -> Polled;
    /// While on, what is taken is not acknowledged to the host: values held here are not
    /// handed on yet, and must come again if this process is killed.
    fn defer_acks(&mut self, defer: bool);
}

/// The values of `source`, as a list or a stream (see the module's notes). An error value
/// ends the list: it streams, the error last, as it would locally.
pub fn deliver(mut source: impl Source, head: Span, signals: Signals) -> PipelineData {
    source.defer_acks(true);
    let started = Instant::now();
    let mut held = Vec::new();
    let mut weight = 0;
    let whole = loop {
        if weight >= SETTLE_BYTES {
            break false;
        }
        // The clock is read for every value at first, then every few hundred (a bulk stream
        // has thousands a millisecond).
        if held.len() < 4096 || held.len() % 256 == 0 {
            let elapsed = started.elapsed();
            if elapsed >= SETTLE {
                break false;
            }
            // Too slow to be worth holding: streamed, its values cost little, and are seen.
            if elapsed >= RATE_AFTER && (held.len() as f64) < MIN_RATE * elapsed.as_secs_f64() {
                break false;
            }
        }
        match source.poll(GAP) {
            Polled::Value(value) => {
                let error = value.is_error();
                weight += nu_session_client::value_weight(&value);
                held.push(value);
                if error {
                    break false;
                }
            }
            Polled::Done => break true,
            Polled::Waiting => break false,
        }
    };
    if whole {
        // Acknowledged as the source ends (dropped with this list's delivery).
        return PipelineData::value(Value::list(held, head), None);
    }
    let mut held = held.into_iter();
    let mut deferring = true;
    let stream = std::iter::from_fn(move || {
        if let Some(value) = held.next() {
            return Some(value);
        }
        if deferring {
            // Everything held is handed on: from here what is taken is what is delivered, and
            // the usual lag covers what is in flight to the engine.
            deferring = false;
            source.defer_acks(false);
        }
        loop {
            match source.poll(Duration::from_secs(3600)) {
                Polled::Value(value) => return Some(value),
                Polled::Done => return None,
                Polled::Waiting => {}
            }
        }
    });
    PipelineData::list_stream(ListStream::new(stream, head, signals), None)
}
