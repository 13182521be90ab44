//! What `nu` took of a list stream this plugin returned, as the plugin protocol itself says it:
//! `nu` acknowledges each item when its consumer takes it, and says when it stops reading
//! (`Drop`: `| first 3`, an error downstream). The writer in `nu-plugin` runs ahead of the
//! consumer by up to a hundred items, so what the plugin handed on is not what `nu` took; this is.
//!
//! A command that returns a stream it wants followed gives a [`Delivery`] to [`returning`] just
//! before it returns it; the encoder ([`crate::encoding`]) sees the response that names the
//! stream and files the delivery under the stream's id ([`sent`]), and the decoder tells it of
//! each acknowledgement and the drop ([`received`]). Its [`Follower`] learns of each item taken,
//! in order, and of the stop.
//!
//! When the plugin does not run under its own encoder (in-process tests), nothing is filed:
//! [`Delivery::followed`] says so, and the stream's items count as taken when handed on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use nu_plugin_protocol::{PipelineDataHeader, PluginCallResponse, PluginInput, PluginOutput};

/// Told what `nu` did with the items of a followed stream.
pub trait Follower: Send + Sync {
    /// The oldest item handed on and not taken was taken.
    fn taken(&self);
    /// `nu` stopped reading: the items handed on and not taken never will be.
    fn stopped(&self);
}

/// One returned stream, followed.
pub struct Delivery {
    follower: Box<dyn Follower>,
    filed: AtomicBool,
    stopped: AtomicBool,
}

impl Delivery {
    pub fn new(follower: impl Follower + 'static) -> Arc<Delivery> {
        Arc::new(Delivery {
            follower: Box::new(follower),
            filed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        })
    }

    /// Whether `nu`'s acknowledgements reach it (false: count items as taken when handed on).
    pub fn followed(&self) -> bool {
        self.filed.load(Ordering::SeqCst)
    }

    /// Whether `nu` stopped reading the stream.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// An item handed on counts as taken (when not followed).
    pub fn taken(&self) {
        self.follower.taken();
    }
}

/// Followed streams, by the id `nu-plugin` gave them.
static STREAMS: LazyLock<Mutex<HashMap<usize, Arc<Delivery>>>> = LazyLock::new(Default::default);

thread_local! {
    /// The delivery of the stream the command running on this thread is about to return.
    static RETURNING: RefCell<Option<Arc<Delivery>>> = const { RefCell::new(None) };
}

fn streams() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<Delivery>>> {
    STREAMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The list stream the command running on this thread returns next is followed by `delivery`.
/// Call it just before returning the stream.
pub fn returning(delivery: Arc<Delivery>) {
    RETURNING.with(|r| *r.borrow_mut() = Some(delivery));
}

/// The plugin is sending `message` (on the thread that made it): a call's response files the
/// delivery its command registered, under the id of the stream it returns.
pub fn sent(message: &PluginOutput) {
    let PluginOutput::CallResponse(_, response) = message else {
        return;
    };
    let Some(delivery) = RETURNING.with(|r| r.borrow_mut().take()) else {
        return;
    };
    if let PluginCallResponse::PipelineData(PipelineDataHeader::ListStream(info)) = response {
        delivery.filed.store(true, Ordering::SeqCst);
        streams().insert(info.id, delivery);
    }
}

/// `nu` sent `message`: its acknowledgements and drops of followed streams are told.
pub fn received(message: &PluginInput) {
    match message {
        PluginInput::Ack(id) => {
            let delivery = streams().get(id).cloned();
            if let Some(delivery) = delivery {
                delivery.follower.taken();
            }
        }
        PluginInput::Drop(id) => {
            let delivery = streams().remove(id);
            if let Some(delivery) = delivery {
                delivery.stopped.store(true, Ordering::SeqCst);
                delivery.follower.stopped();
            }
        }
        _ => {}
    }
}
