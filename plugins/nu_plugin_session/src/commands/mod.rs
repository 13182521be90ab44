//! One command per file, each a [`SessionCommand`]: name, description, signature, examples, run.
//! They are thin: selection is [`crate::select`], what they do to sessions
//! [`crate::operations`], running code [`crate::invocation`], flags [`crate::flags`].

mod connect_session;
mod disconnect_session;
mod enter_session;
mod exit_session;
mod get_session;
mod invoke_session;
mod new_session;
mod receive_session;
mod remove_session;

pub use connect_session::ConnectSession;
pub use disconnect_session::DisconnectSession;
pub use enter_session::EnterSession;
pub use exit_session::ExitSession;
pub use get_session::GetSession;
pub use invoke_session::InvokeSession;
pub use new_session::NewSession;
pub use receive_session::ReceiveSession;
pub use remove_session::RemoveSession;

use nu_plugin::{DynamicCompletionCall, EngineInterface, EvaluatedCall, PluginCommand};
use nu_protocol::engine::ArgType;
use nu_protocol::{Category, DynamicSuggestion, Example, LabeledError, PipelineData, Signature};

use crate::{Cx, SessionPlugin};

/// Every command, each wrapped so that the plugin's garbage collection follows the session table
/// after it runs, and its arguments complete from [`crate::completion`].
pub fn all() -> Vec<Box<dyn PluginCommand<Plugin = SessionPlugin>>> {
    vec![
        Box::new(Command(NewSession)),
        Box::new(Command(GetSession)),
        Box::new(Command(RemoveSession)),
        Box::new(Command(InvokeSession)),
        Box::new(Command(DisconnectSession)),
        Box::new(Command(ConnectSession)),
        Box::new(Command(ReceiveSession)),
        Box::new(Command(EnterSession)),
        Box::new(Command(ExitSession)),
    ]
}

/// Where the session commands are listed in `help commands`.
pub fn category() -> Category {
    Category::Custom("session".into())
}

/// One session command. The plugin serves it through [`Command`], which builds its signature
/// in the session category, keeps the plugin alive while sessions exist after each run, and
/// completes its arguments.
pub trait SessionCommand: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    fn extra_description(&self) -> &str;
    /// The flags and types, added to `base` (the name, in the session category).
    fn signature(&self, base: Signature) -> Signature;
    fn search_terms(&self) -> Vec<&str>;
    fn examples(&self) -> Vec<Example<'_>>;
    fn run(&self, cx: &Cx, input: PipelineData) -> Result<PipelineData, LabeledError>;
}

/// A command as the plugin serves it.
pub struct Command<C>(pub C);

impl<C: SessionCommand> PluginCommand for Command<C> {
    type Plugin = SessionPlugin;

    fn name(&self) -> &str {
        self.0.name()
    }

    fn description(&self) -> &str {
        self.0.description()
    }

    fn extra_description(&self) -> &str {
        self.0.extra_description()
    }

    fn signature(&self) -> Signature {
        self.0
            .signature(Signature::build(self.0.name()).category(category()))
    }

    fn search_terms(&self) -> Vec<&str> {
        self.0.search_terms()
    }

    fn examples(&self) -> Vec<Example<'_>> {
        self.0.examples()
    }

    fn run(
        &self,
        plugin: &SessionPlugin,
        engine: &EngineInterface,
        call: &EvaluatedCall,
        input: PipelineData,
    ) -> Result<PipelineData, LabeledError> {
        let cx = Cx {
            plugin,
            engine,
            call,
            span: call.head,
        };
        let result = self.0.run(&cx, input);
        plugin.keep_alive(engine);
        result
    }

    #[allow(deprecated)]
    fn get_dynamic_completion(
        &self,
        plugin: &SessionPlugin,
        engine: &EngineInterface,
        call: DynamicCompletionCall,
        arg_type: ArgType,
        _experimental: nu_protocol::engine::ExperimentalMarker,
    ) -> Option<Vec<DynamicSuggestion>> {
        crate::completion::complete(self.0.name(), plugin, engine, &call, &arg_type)
    }
}
