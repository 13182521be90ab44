//! Evaluation: the thread that runs the queued invocations one at a time, in order, in the
//! session's engine, and pushes their events to the outbox (printed output first).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nu_protocol::ShellError;
use nu_protocol::shell_error::generic::GenericError;
use nu_session_protocol::{ErrorKind, EventBody, RemoteError};

use super::Worker;
use super::engine::Engine;
use super::output::OutputCapture;

/// Runs invocations as they are queued; never returns (the session ends through `exit`).
pub(super) fn evaluate(worker: &Worker, engine: &mut Engine, capture: &OutputCapture) {
    loop {
        let invocation = {
            let mut state = worker.lock();
            loop {
                if let Some(invocation) = state.queue.pop_front() {
                    worker
                        .running_call
                        .store(invocation.call_id, Ordering::SeqCst);
                    break invocation;
                }
                state = worker.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        worker.interrupt.store(false, Ordering::SeqCst);
        let call_id = invocation.call_id;
        let mut last_drain: Option<Instant> = None;
        let mut since_drain = 0u32;
        let mut emit = |event: EventBody| {
            // Output printed before a value or the end reaches the client before it. Checking
            // costs system calls, so within a fast stream it is done every few milliseconds
            // (the clock itself read every 64 events).
            let due = match &event {
                EventBody::Started { .. } => false,
                EventBody::Finished { .. } => true,
                _ => {
                    since_drain += 1;
                    last_drain.is_none_or(|at| {
                        since_drain.is_multiple_of(64) && at.elapsed() >= Duration::from_millis(5)
                    })
                }
            };
            if due {
                capture.drain();
                last_drain = Some(Instant::now());
                since_drain = 0;
            }
            worker.outbox.push(event).map_err(|e| too_large(&e))
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.run(invocation, &mut emit)
        }));
        if let Ok(Some(code)) = outcome {
            // Give the client a moment to receive the news before the session goes.
            worker.outbox.wait_acknowledged(Duration::from_secs(2));
            worker.terminate(&format!("its code called `exit {code}`"));
        }
        if outcome.is_err() {
            let _ = emit(EventBody::Finished {
                call_id,
                error: Some(RemoteError::new(
                    ErrorKind::Failed,
                    "the session's engine panicked while running this code",
                )),
            });
        }
        let _state = worker.lock();
        worker.running_call.store(0, Ordering::SeqCst);
    }
}

/// The error of an invocation whose value could not be sent (over the message limit).
fn too_large(error: &nu_session_protocol::ProtocolError) -> ShellError {
    ShellError::Generic(
        GenericError::new_internal("cannot send a value of this invocation", error.to_string())
            .with_help(
                "the limit is max_message_bytes in the host's settings (docs/configuration.md)",
            ),
    )
}
