//! The same code in several sessions (PowerShell's `Invoke-Command -Session $many`): at most
//! `--throttle-limit` run at once, a new one starting as one ends; a session that fails (its
//! code errors, it is not Opened, its connection is lost) never stops the others.
//!
//! - [`stream`]: the values, session by session in selection order; the failures are raised
//!   after the last value, as one error named after the sessions (`on web2 (session 3): ...`).
//! - [`by_session`]: one record per session, with errors as data.

use std::collections::VecDeque;
use std::time::Instant;

use nu_plugin::EngineInterface;
use nu_protocol::{
    HandlerGuard, LabeledError, ListStream, PipelineData, Record, ShellError, Span, Value,
};

use super::output::OutputSink;
use super::{Run, Runnable, Starter, lookup};
use crate::SessionPlugin;
use crate::errors::{many_failed, named};
use crate::fanout::who;
use crate::status::Status;

/// A session to run the code in, or why it cannot.
struct Planned {
    who: String,
    target: Result<Runnable, LabeledError>,
}

fn plan(plugin: &SessionPlugin, ids: &[i64], head: Span) -> VecDeque<Planned> {
    ids.iter()
        .map(|id| Planned {
            who: who(plugin, *id),
            target: lookup(plugin, *id, head),
        })
        .collect()
}

/// The values of every session, one session after the other, then the failures.
pub fn stream(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    ids: &[i64],
    starter: Starter,
    limit: usize,
    guard: HandlerGuard,
) -> PipelineData {
    let head = starter.head;
    let total = ids.len();
    let mut results = Results {
        running: VecDeque::new(),
        pending: plan(plugin, ids, head),
        limit: limit.max(1),
        starter,
        output: OutputSink::new(engine),
        failures: Vec::new(),
        total,
        finished: 0,
        status: Status::new(format!("invoke-session: 0/{total} done")),
        _guard: guard,
    };
    results.top_up();
    PipelineData::list_stream(
        ListStream::new(
            std::iter::from_fn(move || results.next_value()),
            head,
            engine.signals().clone(),
        ),
        None,
    )
}

struct Results {
    /// Started (or failed to start), in order; at most `limit` long.
    running: VecDeque<(String, Result<Run, LabeledError>)>,
    /// Not started yet, in order.
    pending: VecDeque<Planned>,
    limit: usize,
    starter: Starter,
    output: OutputSink,
    /// The sessions that failed so far, named.
    failures: Vec<LabeledError>,
    total: usize,
    finished: usize,
    status: Status,
    /// Keeps Ctrl-C forwarded while the results are read.
    _guard: HandlerGuard,
}

impl Results {
    fn top_up(&mut self) {
        while self.running.len() < self.limit
            && let Some(planned) = self.pending.pop_front()
        {
            let run = planned.target.and_then(|t| self.starter.start(t));
            self.running.push_back((planned.who, run));
        }
    }

    /// The front session is done (with `failure`, if it failed).
    fn finish_front(&mut self, failure: Option<LabeledError>) {
        if let Some((who, _)) = self.running.pop_front()
            && let Some(error) = failure
        {
            self.failures.push(named(error, &who));
        }
        self.finished += 1;
        self.status.set(format!(
            "invoke-session: {}/{} done",
            self.finished, self.total
        ));
    }

    fn next_value(&mut self) -> Option<Value> {
        loop {
            self.top_up();
            let Some((_, front)) = self.running.front_mut() else {
                // Every session ran: now the failures, as one error.
                if self.failures.is_empty() {
                    return None;
                }
                let error = many_failed(std::mem::take(&mut self.failures), self.total, "sessions");
                let span = error.labels.first().map_or(self.starter.head, |l| l.span);
                return Some(Value::error(
                    ShellError::LabeledError(Box::new(error)),
                    span,
                ));
            };
            match front {
                Err(error) => {
                    let error = error.clone();
                    self.finish_front(Some(error));
                }
                Ok(run) => match run.next_value(&self.output) {
                    Some(Value::Error { error, .. }) => {
                        let error = LabeledError::from_diagnostic(&*error);
                        self.finish_front(Some(error));
                    }
                    Some(value) => return Some(value),
                    None => self.finish_front(None),
                },
            }
        }
    }
}

/// One record per session, in selection order: `id`, `name`, `computer_name`, `output` (its
/// value, or a list for a stream), `error` (nothing, or a record with `msg`, `help`, `code`),
/// `duration`.
pub fn by_session(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    ids: &[i64],
    starter: &Starter,
    limit: usize,
) -> Value {
    let head = starter.head;
    let output = OutputSink::new(engine);
    let results = crate::fanout::run_all(ids, limit, "invoke-session", |id| {
        let started = Instant::now();
        let collected = lookup(plugin, *id, head)
            .and_then(|target| starter.start(target))
            .map(|run| run.collect(&output));
        let (value, error) = match collected {
            Ok(collected) => (collected.output, collected.error),
            Err(error) => (Value::nothing(head), Some(error)),
        };
        (value, error, started.elapsed())
    });
    let rows = ids
        .iter()
        .zip(results)
        .map(|(id, result)| {
            let (value, error, took) = result.unwrap_or_else(|| {
                (
                    Value::nothing(head),
                    Some(LabeledError::new("invoke-session failed unexpectedly")),
                    std::time::Duration::ZERO,
                )
            });
            let (name, computer_name) = plugin
                .sessions()
                .get(*id)
                .map(|s| (s.name.clone(), s.computer_name.clone()))
                .unwrap_or_default();
            let mut record = Record::new();
            record.push("id", Value::int(*id, head));
            record.push("name", Value::string(name, head));
            record.push("computer_name", Value::string(computer_name, head));
            record.push("output", value);
            record.push(
                "error",
                error.map_or(Value::nothing(head), |e| error_record(&e, head)),
            );
            record.push(
                "duration",
                Value::duration(i64::try_from(took.as_nanos()).unwrap_or(i64::MAX), head),
            );
            Value::record(record, head)
        })
        .collect();
    Value::list(rows, head)
}

/// An error as data: `{msg, help, code}`.
fn error_record(error: &LabeledError, span: Span) -> Value {
    let text = |t: &Option<String>| {
        t.as_ref()
            .map_or(Value::nothing(span), |t| Value::string(t, span))
    };
    let mut record = Record::new();
    record.push("msg", Value::string(&error.msg, span));
    record.push("help", text(&error.help));
    record.push("code", text(&error.code));
    Value::record(record, span)
}
