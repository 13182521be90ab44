//! Sending: the attached connection's writer thread streams the outbox to the client, as far
//! as each invocation's window lets it, until the connection closes or is replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Worker;
use crate::conn::Writer;

/// Streams the session's output to the client attached as `generation` (see
/// [`super::outbox::Outbox::attach`]).
pub(super) fn send_output(worker: &Worker, writer: &Writer, closed: &AtomicBool, generation: u64) {
    while !closed.load(Ordering::SeqCst) {
        let Some(batch) = worker
            .outbox
            .next_batch(generation, Duration::from_millis(500))
        else {
            continue;
        };
        if closed.load(Ordering::SeqCst) {
            return;
        }
        for frame in &batch.frames {
            if writer.send_frame(frame).is_err() {
                writer.shutdown();
                return;
            }
        }
    }
}
