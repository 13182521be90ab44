//! Doing one thing for many sessions or computers, at most `limit` at a time, with progress on
//! the status line (stderr, when it is a terminal and the work takes a while).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nu_protocol::{LabeledError, Span};

use crate::status::Status;

/// The default `--throttle-limit`, as PowerShell's.
pub const DEFAULT_THROTTLE: usize = 32;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
