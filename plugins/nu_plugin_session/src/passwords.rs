//! Asking the user for a secret on their terminal (never from arguments, never logged).

use std::sync::{Arc, Mutex};

use nu_plugin::EngineInterface;
use nu_session_client::ssh::{Prompter, Secret};

/// A prompter for this command, or `None` when `nu` has no terminal to ask on.
pub fn prompter(engine: &EngineInterface) -> Option<Prompter> {
    // The controlling terminal, whatever stdin and stdout are (they may be pipes).
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let engine = engine.clone();
    // One question at a time, even when several hosts ask at once.
    let asking = Arc::new(Mutex::new(()));
    Some(Prompter::new(move |prompt| {
        let _one = asking.lock().unwrap_or_else(|e| e.into_inner());
        // The plugin runs in its own process group: reading the terminal from there would stop
        // it, so it takes the foreground while it asks.
        let _foreground = engine.enter_foreground().ok();
        rpassword::prompt_password(prompt)
            .ok()
            .map(Secret::new)
            .filter(|answer| !answer.is_empty())
    }))
}
