//! The Nushell engine of one session: one `EngineState` and one persistent `Stack`, so that
//! variables, definitions, aliases, `$env` and the working directory carry over from one
//! invocation to the next, as they do from one line to the next at a `nu` prompt.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use nu_protocol::debugger::WithoutDebug;
use nu_protocol::engine::{EngineState, Stack, StateWorkingSet};
use nu_protocol::{
    Config, Handlers, IntoValue, PipelineData, ShellError, SignalAction, Signals, Span, Type,
    UseAnsiColoring, Value,
};
use nu_session_protocol::{ErrorKind, EventBody, Invocation, RemoteError};

/// Where an invocation's events go (the outbox); an error when one cannot be sent.
pub type Emit<'a> = dyn FnMut(EventBody) -> Result<(), ShellError> + 'a;

pub struct Engine {
    state: EngineState,
    stack: Stack,
    invocations: u64,
}

impl Engine {
    /// Builds the full command set of `nu` (language, shell commands, extra commands, `print`
    /// and the other CLI commands), with the environment of this process and `cwd` as `$env.PWD`.
    /// `interrupt` is the flag that stops running code.
    pub fn new(cwd: &Path, interrupt: Arc<AtomicBool>) -> Result<Engine, ShellError> {
        let mut state = nu_cmd_lang::create_default_context();
        state = nu_command::add_shell_command_context(state);
        state = nu_cmd_extra::add_extra_command_context(state);
        state = nu_cli::add_cli_context(state);

        // `$nu.home-dir`, `$nu.config-path` and friends, resolved as `nu` resolves them.
        if let Ok((dirs, _warnings)) =
            nu_config::resolve_paths(&nu_config::SystemEnv, &nu_config::CliOverrides::default())
        {
            state.config_dirs = dirs;
        }
        // Values cross the wire; colours are the client's business.
        let config = Config {
            use_ansi_coloring: UseAnsiColoring::False,
            ..Default::default()
        };
        state.add_env_var("config".into(), config.clone().into_value(Span::unknown()));
        state.set_config(config);
        state.add_env_var(
            "ENV_CONVERSIONS".into(),
            Value::record(Default::default(), Span::unknown()),
        );
        nu_cli::gather_parent_env_vars(&mut state, cwd);
        let mut stack = Stack::new().collect_value();
        nu_engine::convert_env_values(&mut state, &mut stack)?;
        state.generate_nu_constant();

        state.set_signals(Signals::new(interrupt));
        let handlers = Handlers::new();
        let jobs = state.jobs.clone();
        // As in `nu`: an interrupt also stops background jobs.
        let _ = handlers.register_unguarded(Box::new(move |action| {
            if action == SignalAction::Interrupt
                && let Ok(mut jobs) = jobs.lock()
            {
                let _ = jobs.kill_all();
            }
        }));
        state.signal_handlers = Some(handlers);

        Ok(Engine {
            state,
            stack,
            invocations: 0,
        })
    }

    /// Runs one invocation, emitting `Started`, the values, and `Finished`. Returns the exit
    /// code when the code called `exit`: the session ends, as a shell does.
    pub fn run(&mut self, invocation: Invocation, emit: &mut Emit<'_>) -> Option<i32> {
        let call_id = invocation.call_id;
        self.state.reset_signals();
        let (error, exit) = match self.eval(invocation, emit) {
            Ok(()) => (None, None),
            Err((ShellError::Exit { code, .. }, _)) => (
                Some(RemoteError::new(
                    ErrorKind::Ended,
                    format!("the session ended: its code called exit (code {code})"),
                )),
                Some(code),
            ),
            Err((error, source)) => (Some(RemoteError::from_shell_error(&error, source)), None),
        };
        // A `Finished` is small: it always fits.
        let _ = emit(EventBody::Finished { call_id, error });
        exit
    }

    fn eval(
        &mut self,
        invocation: Invocation,
        emit: &mut Emit<'_>,
    ) -> Result<(), (ShellError, Span)> {
        let call_id = invocation.call_id;
        self.invocations += 1;
        let name = format!("invocation #{}", self.invocations);
        let (block, bindings, source_span, delta) = {
            let mut working_set = StateWorkingSet::new(&self.state);
            // Parameters and captured variables are declared before the source is parsed, so
            // `$name` in it resolves to them.
            let bindings: Vec<_> = invocation
                .bindings
                .into_iter()
                .map(|binding| {
                    let id = working_set.add_variable(
                        binding.name.into_bytes(),
                        Span::unknown(),
                        Type::Any,
                        false,
                    );
                    (id, local(binding.value))
                })
                .collect();
            let start = working_set.next_span_start();
            let source_span = Span::new(start, start + invocation.source.len());
            let block = nu_parser::parse(
                &mut working_set,
                Some(&name),
                invocation.source.as_bytes(),
                false,
            );
            let first_error = working_set
                .parse_errors
                .first()
                .map(nu_protocol::LabeledError::from_diagnostic)
                .or_else(|| {
                    working_set
                        .compile_errors
                        .first()
                        .map(nu_protocol::LabeledError::from_diagnostic)
                });
            if let Some(error) = first_error {
                return Err((ShellError::LabeledError(Box::new(error)), source_span));
            }
            (block, bindings, source_span, working_set.render())
        };
        let with_span = |e: ShellError| (e, source_span);
        self.state.merge_delta(delta).map_err(with_span)?;
        for (id, value) in bindings {
            self.stack.add_var(id, value);
        }
        let input = match invocation.input {
            Some(value) => PipelineData::value(local(value), None),
            None => PipelineData::empty(),
        };
        let result =
            nu_engine::eval_block::<WithoutDebug>(&self.state, &mut self.stack, &block, input);
        self.forget_deleted_variables();
        let started = |stream, bytes| EventBody::Started {
            call_id,
            stream,
            bytes,
        };
        match result.map_err(with_span)?.body {
            PipelineData::Empty => emit(started(false, None)).map_err(with_span)?,
            PipelineData::Value(value, _) => {
                let value = self.portable(value).map_err(with_span)?;
                emit(started(false, None)).map_err(with_span)?;
                emit(EventBody::Value { call_id, value }).map_err(with_span)?;
            }
            PipelineData::ListStream(stream, _) => {
                emit(started(true, None)).map_err(with_span)?;
                for value in stream {
                    let value = self.portable(value).map_err(with_span)?;
                    emit(EventBody::Value { call_id, value }).map_err(with_span)?;
                }
            }
            PipelineData::ByteStream(stream, _) => {
                emit(started(false, Some(stream.type_().into()))).map_err(with_span)?;
                super::bytes::forward(stream, call_id, emit).map_err(with_span)?;
            }
        }
        Ok(())
    }

    /// `hide` of a variable, as the REPL applies it.
    fn forget_deleted_variables(&mut self) {
        for var_id in std::mem::take(&mut self.stack.deletions) {
            if let Some(active) = self.state.scope.active_overlays.last()
                && let Some((_, overlay)) = self.state.scope.overlays.get_mut(active.get())
            {
                overlay.vars.retain(|_, v| *v != var_id);
            }
        }
    }

    /// Makes a value meaningful on the other side: an error value becomes the invocation's
    /// error, closures become their source text, custom values their base value.
    fn portable(&self, mut value: Value) -> Result<Value, ShellError> {
        if let Value::Error { error, .. } = value {
            return Err(*error);
        }
        value.recurse_mut(&mut |v: &mut Value| {
            let span = v.span();
            match v {
                Value::Closure { val, .. } => {
                    let block = self.state.get_block(val.block_id);
                    let source = block
                        .span
                        .map(|s| {
                            String::from_utf8_lossy(self.state.get_span_contents(s)).into_owned()
                        })
                        .unwrap_or_else(|| "<closure>".into());
                    *v = Value::string(source, span);
                }
                Value::Custom { val, .. } => {
                    *v = val.to_base_value(span)?;
                }
                _ => {}
            }
            Ok::<_, ShellError>(())
        })?;
        Ok(value)
    }
}

/// Values from the client carry spans into the client's sources; here they mean nothing.
fn local(mut value: Value) -> Value {
    let _ = value.recurse_mut(&mut |v: &mut Value| {
        v.set_span(Span::unknown());
        Ok::<_, std::convert::Infallible>(())
    });
    value
}
