//! Sending: the attached connection's writer thread streams the outbox to the client, from
//! just after the last event it has, until the connection closes or is replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nu_session_protocol::HostMessage;

use super::Worker;
use crate::conn::Writer;

/// Streams the session's output to the attached client, from just after `sent`.
pub(super) fn send_output(worker: &Worker, writer: &Writer, closed: &AtomicBool, mut sent: u64) {
    while !closed.load(Ordering::SeqCst) {
        let batch = worker.outbox.next_batch(sent, Duration::from_millis(500));
        if closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(batch) = batch else { continue };
        let dropped = worker.outbox.take_dropped();
        if dropped > 0
            && writer
                .send(&HostMessage::Dropped { count: dropped })
                .is_err()
        {
            writer.shutdown();
            return;
        }
        if writer.send_frame(&batch.frame).is_err() {
            writer.shutdown();
            return;
        }
        sent = batch.last;
    }
}
