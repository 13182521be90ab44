//! Doing one thing for many sessions or computers, the one way every command does it: at most
//! `limit` at a time (a new one starts as soon as one ends), progress on the status line (stderr,
//! when it is a terminal and the work takes a while), and one policy for failures — a target's
//! failure is a row or a named error, never the end of the others:
//!
//! - [`rows`]: commands that return a list give an error row per failed target, named after it
//!   (`on web2: ...`); a lone target's failure is the command's error;
//! - [`all_done`]: commands that return nothing try every target, then raise one error naming
//!   the ones that failed and how many.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nu_protocol::{LabeledError, PipelineData, ShellError, Span, Value};

use crate::SessionPlugin;
use crate::errors::{many_failed, named};
use crate::select::Selected;
use crate::status::Status;

/// Runs `f` on every item, `limit` at a time (a new one starts as soon as one ends), and returns
/// the results in the order of `items`. `None`: `f` panicked for that item (the others go on).
/// `what` names the work in the progress line (`new-session: 12/40 done`).
pub fn run_all<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    what: &str,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let total = items.len();
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..total).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let status = (total > 1).then(|| Status::new(format!("{what}: 0/{total} done")));
    std::thread::scope(|scope| {
        for _ in 0..limit.clamp(1, total.max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(index) else { break };
                    let result = catch_unwind(AssertUnwindSafe(|| f(item))).ok();
                    if let Ok(mut results) = results.lock() {
                        results[index] = result;
                    }
                    let now = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some(status) = &status {
                        status.set(format!("{what}: {now}/{total} done"));
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// [`run_all`] for work that can fail: a panic for one item becomes that item's error, labelled
/// at `span_of(item)`.
pub fn run_each<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    what: &str,
    span_of: impl Fn(&T) -> Span,
    f: impl Fn(&T) -> Result<R, LabeledError> + Sync,
) -> Vec<Result<R, LabeledError>> {
    run_all(items, limit, what, f)
        .into_iter()
        .zip(items)
        .map(|(result, item)| {
            result.unwrap_or_else(|| {
                Err(LabeledError::new(format!("{what} failed unexpectedly"))
                    .with_label("here", span_of(item)))
            })
        })
        .collect()
}

/// [`run_each`] over the selected sessions, each result named after its session (see [`who`]),
/// followed by the computers that could not be asked (when `with_unreachable`).
pub fn for_sessions<R: Send>(
    plugin: &SessionPlugin,
    selected: Selected,
    limit: usize,
    what: &str,
    span: Span,
    f: impl Fn(i64) -> Result<R, LabeledError> + Sync,
) -> Vec<(String, Result<R, LabeledError>)> {
    let results = run_each(&selected.ids, limit, what, |_| span, |id| f(*id));
    let mut named: Vec<_> = selected
        .ids
        .iter()
        .map(|id| who(plugin, *id))
        .zip(results)
        .collect();
    named.extend(selected.unreachable.into_iter().map(|(c, e)| (c, Err(e))));
    named
}

/// [`for_sessions`] for commands that change sessions and return them: each session's record
/// once `f` is done with it, shaped by [`rows`].
pub fn session_records(
    plugin: &SessionPlugin,
    selected: Selected,
    limit: usize,
    what: &str,
    span: Span,
    f: impl Fn(i64) -> Result<(), LabeledError> + Sync,
) -> Result<PipelineData, LabeledError> {
    let results = for_sessions(plugin, selected, limit, what, span, |id| {
        f(id)?;
        let table = plugin.sessions();
        Ok(table
            .records(&[id], span)
            .pop()
            .unwrap_or(Value::nothing(span)))
    });
    Ok(PipelineData::value(rows(results, span)?, None))
}

/// How a session is named in errors and progress: `web2 (session 3)`.
pub fn who(plugin: &SessionPlugin, id: i64) -> String {
    match plugin.sessions().get(id) {
        Some(session) => format!("{} (session {id})", session.computer_name),
        None => format!("session {id}"),
    }
}

/// Results for many targets (each with its name) as a list: a failure is an error row named
/// after its target; a lone target's failure is the command's error.
pub fn rows(
    results: Vec<(String, Result<Value, LabeledError>)>,
    span: Span,
) -> Result<Value, LabeledError> {
    let mut results = results;
    if results.len() == 1
        && results[0].1.is_err()
        && let Some((_, Err(error))) = results.pop()
    {
        return Err(error);
    }
    Ok(Value::list(
        results
            .into_iter()
            .map(|(target, row)| {
                row.unwrap_or_else(|error| {
                    Value::error(
                        ShellError::LabeledError(Box::new(named(error, &target))),
                        span,
                    )
                })
            })
            .collect(),
        span,
    ))
}

/// Results for many targets of a command that returns nothing: every target was tried; the ones
/// that failed make one error (named after them, saying how many); a lone target's failure is
/// the command's error as it is.
pub fn all_done(
    results: Vec<(String, Result<(), LabeledError>)>,
    what: &str,
) -> Result<(), LabeledError> {
    let total = results.len();
    let mut failures: Vec<(String, LabeledError)> = results
        .into_iter()
        .filter_map(|(target, result)| result.err().map(|e| (target, e)))
        .collect();
    match failures.len() {
        0 => Ok(()),
        1 if total == 1 => Err(failures.remove(0).1),
        _ => Err(many_failed(
            failures
                .into_iter()
                .map(|(target, error)| named(error, &target))
                .collect(),
            total,
            what,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rows_name_failures_and_a_lone_failure_is_the_error() {
        let span = Span::test_data();
        let ok = |n| (format!("web{n}"), Ok(Value::test_int(n)));
        let failed = |n| (format!("web{n}"), Err(LabeledError::new("refused")));
        assert_eq!(
            rows(vec![ok(1)], span).unwrap(),
            Value::test_list(vec![Value::test_int(1)])
        );
        assert_eq!(rows(vec![failed(1)], span).unwrap_err().msg, "refused");
        let both = rows(vec![ok(1), failed(2)], span).unwrap();
        let both = both.as_list().unwrap();
        assert_eq!(both[0], Value::test_int(1));
        match &both[1] {
            Value::Error { error, .. } => assert_eq!(
                LabeledError::from_diagnostic(&**error).msg,
                "on web2: refused"
            ),
            other => panic!("not an error row: {other:?}"),
        }
        let done = |n, ok: bool| {
            (
                format!("web{n}"),
                if ok {
                    Ok(())
                } else {
                    Err(LabeledError::new("gone"))
                },
            )
        };
        assert!(all_done(vec![done(1, true), done(2, true)], "sessions").is_ok());
        assert_eq!(
            all_done(vec![done(1, false)], "sessions").unwrap_err().msg,
            "gone"
        );
        assert_eq!(
            all_done(
                vec![done(1, false), done(2, true), done(3, false)],
                "sessions"
            )
            .unwrap_err()
            .msg,
            "2 of 3 sessions failed; the first on web1: gone"
        );
    }

    #[test]
    fn keeps_order_and_never_exceeds_the_limit() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let items: Vec<u64> = (0..40).collect();
        let results = run_all(&items, 5, "test", |n| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5 + n % 3));
            running.fetch_sub(1, Ordering::SeqCst);
            n * 2
        });
        let expected: Vec<Option<u64>> = (0..40).map(|n| Some(n * 2)).collect();
        assert_eq!(results, expected);
        assert_eq!(most.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_panic_is_that_items_result_only() {
        let items = [1, 2, 3];
        let results = run_all(&items, 3, "test", |n| {
            assert_ne!(*n, 2, "boom");
            *n
        });
        assert_eq!(results, vec![Some(1), None, Some(3)]);
    }
}
