use nu_plugin::{EngineInterface, EvaluatedCall};
use std::io::IsTerminal;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, Ordering};

use nu_protocol::{
    Example, LabeledError, PipelineData, Signature, Span, Spanned, SyntaxShape, Type, Value,
};
use nu_session_client::SessionSettings;

use super::SessionCommand;
use crate::errors::{Action, client_error, no_session, wrong_state};
use crate::hosts::host_for;
use crate::interactive::{self, Ending, PromptSession};
use crate::select::{Criteria, Reported, naming_flags};
use crate::sessions::SessionState;
use crate::{Cx, SessionPlugin, flags, operations};

pub struct EnterSession;

/// One prompt at a time: it holds the terminal.
static ENTERED: AtomicBool = AtomicBool::new(false);

impl SessionCommand for EnterSession {
    fn name(&self) -> &str {
        "enter-session"
    }

    fn description(&self) -> &str {
        "Start an interactive prompt in a session: each line you type runs there."
    }

    fn extra_description(&self) -> &str {
        "The prompt shows the computer and the session's working directory. Each line runs in the \
         session as invoke-session runs code (variables, definitions and the working directory \
         persist), and its values are rendered here by nu's own table command. Ctrl-C stops the \
         running line; exit-session, exit or Ctrl-D (alone on a line) returns to the local \
         prompt. A session that existed stays Opened; with a computer name, a temporary session \
         is created and removed on exit. History is kept per computer in \
         $XDG_DATA_HOME/nu-session/history (else ~/.local/share/nu-session/history)."
    }

    fn signature(&self, base: Signature) -> Signature {
        let signature = flags::declare_ssh(base)
            .input_output_types(vec![(Type::Any, Type::Nothing)])
            .optional(
                "target",
                SyntaxShape::Any,
                "The session: an id or a session record. Or a computer name (host, user@host:port, an ssh config alias, localhost) for a temporary session.",
            );
        naming_flags(
            signature,
            "The session with this name (a case-insensitive glob that must match one session).",
        )
    }

    fn search_terms(&self) -> Vec<&str> {
        vec![
            "enter-pssession",
            "etsn",
            "interactive",
            "prompt",
            "shell",
            "remote",
        ]
    }

    fn examples(&self) -> Vec<Example<'_>> {
        // Interactive: they need a terminal, so `help` shows them and nothing runs them.
        vec![
            Example {
                example: "let s = new-session web1; enter-session $s.0.id",
                description: "Work in a session; the prompt becomes [web1]: /home/you> and exit-session comes back, the session still Opened",
                result: None,
            },
            Example {
                example: "get-session --name ITTask | enter-session",
                description: "Enter a session piped from get-session (a Disconnected one is connected first)",
                result: None,
            },
            Example {
                example: "enter-session admin@web1:2222",
                description: "A temporary session over SSH, removed when you leave the prompt",
                result: None,
            },
            Example {
                example: "enter-session localhost",
                description: "A temporary session on this machine",
                result: None,
            },
        ]
    }

    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError> {
        let (plugin, engine, call, head) = (cx.plugin, cx.engine, cx.call, cx.span);
        let entry = match what_to_enter(plugin, call, input)? {
            What::Session(id) => {
                check_enterable(plugin, id, head)?;
                needs_terminal(engine, head)?;
                operations::connect(plugin, id, head)?;
                Entry {
                    id,
                    temporary: false,
                }
            }
            What::Computer(computer) => {
                let ssh = flags::ssh(plugin, call, engine)?;
                needs_terminal(engine, head)?;
                Entry {
                    id: temporary_session(plugin, engine, &computer, &ssh)?,
                    temporary: true,
                }
            }
        };
        let ending = entry.enter(plugin, engine, head);
        entry.leave(plugin, ending, head)
    }
}

enum What {
    Session(i64),
    Computer(Spanned<String>),
}

/// The session named by the argument, the flags or the input (exactly one), or a computer name.
fn what_to_enter(
    plugin: &SessionPlugin,
    call: &EvaluatedCall,
    input: PipelineData,
) -> Result<What, LabeledError> {
    let head = call.head;
    let mut criteria = Criteria::from_call(call, None)?;
    let mut values: Vec<Value> = call.opt::<Value>(0)?.into_iter().collect();
    match input {
        PipelineData::Value(value, _) => values.push(value),
        other => criteria.add_pipeline(other)?,
    }
    let mut computers = Vec::new();
    for value in values {
        let span = value.span();
        match value {
            Value::String { val, .. } => computers.push(Spanned { item: val, span }),
            other => criteria.add_value(other)?,
        }
    }
    if computers.is_empty() && criteria.is_empty() {
        return Err(
            LabeledError::new("enter-session needs a session or a computer name")
                .with_label("enter which session?", head)
                .with_help(
                    "enter-session 1, enter-session --name work, get-session | first | enter-session, or enter-session web1 for a temporary session",
                ),
        );
    }
    if !computers.is_empty() {
        return match computers.pop() {
            Some(computer) if computers.is_empty() && criteria.is_empty() => {
                Ok(What::Computer(computer))
            }
            _ => Err(LabeledError::new(
                "enter-session enters one session: give one session or one computer name",
            )
            .with_label("more than one given", head)),
        };
    }
    let ids = criteria.select(&plugin.sessions(), &Reported::default())?;
    match ids.as_slice() {
        [id] => Ok(What::Session(*id)),
        [] => Err(LabeledError::new("no session matches")
            .with_label("nothing to enter", head)
            .with_help("`get-session` lists the sessions of this nu process")),
        many => Err(LabeledError::new(format!(
            "enter-session enters one session, and {} match",
            many.len()
        ))
        .with_label("more than one session", head)
        .with_help(format!(
            "choose one by id: {}",
            many.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A session can be entered when it is Opened and idle, or Disconnected and free (it is
/// connected first).
fn check_enterable(plugin: &SessionPlugin, id: i64, head: Span) -> Result<(), LabeledError> {
    let table = plugin.sessions();
    let session = table.get(id).ok_or_else(|| no_session(id, head))?;
    let idle = session.running.load(SeqCst) == 0;
    match session.state() {
        SessionState::Opened if idle => Ok(()),
        SessionState::Disconnected if !session.attached_elsewhere => Ok(()),
        _ => Err(wrong_state(session, Action::Enter, head)),
    }
}

/// The prompt needs the user's terminal, and stdin and stdout that are not the plugin protocol.
fn needs_terminal(engine: &EngineInterface, head: Span) -> Result<(), LabeledError> {
    let help = "run enter-session at nu's prompt in a terminal; scripts use invoke-session";
    if engine.is_using_stdio() {
        return Err(LabeledError::new(
            "enter-session needs the terminal, but this plugin talks to nu over stdin and stdout",
        )
        .with_label("needs an interactive terminal", head)
        .with_help(help));
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(
            LabeledError::new("enter-session needs a terminal, and nu has none")
                .with_label("needs an interactive terminal", head)
                .with_help(help),
        );
    }
    Ok(())
}

/// A temporary session on `computer`, with the default settings.
fn temporary_session(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    computer: &Spanned<String>,
    ssh: &nu_session_client::ssh::SshOptions,
) -> Result<i64, LabeledError> {
    let (host, transport) = host_for(plugin, engine, computer, ssh)?;
    let id = plugin.sessions().next_id();
    let settings = SessionSettings {
        name: format!("Session{id}"),
        configuration_name: "default".into(),
        idle_timeout: flags::DEFAULT_IDLE_TIMEOUT,
        output_buffering: Default::default(),
    };
    let session = operations::open(id, host, computer.item.clone(), transport, settings)
        .map_err(|e| client_error(&e, computer.span))?;
    plugin.sessions().insert(session);
    Ok(id)
}

/// The session the prompt is in.
struct Entry {
    id: i64,
    /// Made for this prompt: removed when it ends.
    temporary: bool,
}

impl Entry {
    fn enter(
        &self,
        plugin: &SessionPlugin,
        engine: &EngineInterface,
        head: Span,
    ) -> Result<Ending, LabeledError> {
        let _one = OnePrompt::take(head)?;
        let target = {
            let mut table = plugin.sessions();
            let session = table
                .get_mut(self.id)
                .ok_or_else(|| no_session(self.id, head))?;
            let handle = session
                .handle
                .clone()
                .ok_or_else(|| LabeledError::new("the session has no connection"))?;
            session.interactive = true;
            PromptSession {
                id: self.id,
                computer_name: session.computer_name.clone(),
                breaks_at: handle.breaks(),
                handle,
            }
        };
        let ending = interactive::run(plugin, engine, &target, head);
        if let Some(session) = plugin.sessions().get_mut(self.id) {
            session.interactive = false;
        }
        ending
    }

    /// Removes a temporary session (unless its connection broke: then it stays on its host, and
    /// here, Broken) and says how the prompt ended.
    fn leave(
        &self,
        plugin: &SessionPlugin,
        ending: Result<Ending, LabeledError>,
        head: Span,
    ) -> Result<PipelineData, LabeledError> {
        let lost = matches!(ending, Ok(Ending::Lost));
        let removed = if self.temporary && !lost {
            operations::remove(plugin, self.id).map_err(|e| client_error(&e, head))
        } else {
            Ok(())
        };
        match ending? {
            Ending::Lost => Err(self.lost(plugin, head)),
            Ending::Left | Ending::Ended => removed.map(|()| PipelineData::empty()),
        }
    }

    fn lost(&self, plugin: &SessionPlugin, head: Span) -> LabeledError {
        let table = plugin.sessions();
        let (name, computer) = table
            .get(self.id)
            .map(|s| (s.name.clone(), s.computer_name.clone()))
            .unwrap_or_default();
        let link = table
            .get(self.id)
            .and_then(|s| s.handle.as_ref())
            .map(|h| h.link());
        let id = self.id;
        LabeledError::new(format!(
            "the connection to session {id} ({name}) on {computer} was lost"
        ))
        .with_label("left this session's prompt", head)
        .with_help(if link == Some(nu_session_client::Link::Up) {
            format!(
                "the session stayed on its host and is connected again: `enter-session {id}` goes back to it"
            )
        } else if link == Some(nu_session_client::Link::Reconnecting) {
            format!(
                "the session stays on its host and is being reconnected in the background: once `get-session {id}` shows Opened, `enter-session {id}` goes back to it"
            )
        } else {
            format!(
                "the session stays on its host unless the host stopped it: `connect-session {id}` reconnects it, `remove-session {id}` removes it"
            )
        })
    }
}

/// Held while the prompt is up: there is one terminal.
struct OnePrompt;

impl OnePrompt {
    fn take(head: Span) -> Result<OnePrompt, LabeledError> {
        ENTERED
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| OnePrompt)
            .map_err(|_| {
                LabeledError::new("enter-session is already running")
                    .with_label("a second prompt", head)
                    .with_help("leave the first one (exit-session) before entering another session")
            })
    }
}

impl Drop for OnePrompt {
    fn drop(&mut self) {
        ENTERED.store(false, Ordering::SeqCst);
    }
}
