//! The prompt of `enter-session`: a line editor (reedline) on the user's terminal whose lines run
//! in one session exactly as `invoke-session` runs code, their results rendered by the engine's
//! own `table` command (so the user's table settings apply) and their errors as `nu` renders its
//! own.
//!
//! While the prompt is up, the plugin holds the terminal: it is the terminal's foreground process
//! group. At the prompt the line editor reads Ctrl-C as a key (it clears the line); while a line
//! runs, the terminal turns Ctrl-C into SIGINT for the plugin, which interrupts that line in the
//! session. Ctrl-\ and Ctrl-Z are ignored meanwhile: they would kill or stop the plugin, and with
//! it every session of this `nu`.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nu_plugin::{EngineInterface, EvaluatedCall};
use nu_protocol::engine::{EngineState, StateWorkingSet};
use nu_protocol::{DeclId, LabeledError, ParseError, PipelineData, ShellError, Span, Value};
use nu_session_client::{Link, SessionHandle};
use reedline::{
    FileBackedHistory, Prompt, PromptEditMode, PromptHistorySearch, PromptHistorySearchStatus,
    Reedline, Signal, SimpleMatchHighlighter, ValidationResult, Validator,
};

use crate::SessionPlugin;
use crate::code::Code;
use crate::invocation::{Interrupters, invoke_one};

/// Lines of history kept per host.
const HISTORY_LINES: usize = 10_000;

/// How the prompt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `exit-session`, `exit` or Ctrl-D.
    Left,
    /// The session ended on its host (its code called `exit`).
    Ended,
    /// The connection to the session broke.
    Lost,
}

/// The session the prompt runs in.
pub struct PromptSession {
    pub id: i64,
    pub computer_name: String,
    pub handle: SessionHandle,
    /// The connection's failures when the prompt started: any later one, even one it recovered
    /// from at once, ends the prompt (the user is told, never left guessing).
    pub breaks_at: u64,
}

/// Whether `handle`'s connection failed (even if it recovered) since it had `breaks_at` failures.
fn broke_since(handle: &SessionHandle, breaks_at: u64) -> bool {
    !handle.is_alive() || handle.breaks() != breaks_at
}

/// Runs the prompt until the user leaves it or the session goes away.
pub fn run(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    target: &PromptSession,
    head: Span,
) -> Result<Ending, LabeledError> {
    // Signals first: once the terminal is ours, a Ctrl-C must never stop the plugin.
    let ctrl_c = CtrlC::install().map_err(|e| {
        LabeledError::new(format!("cannot take over Ctrl-C: {e}"))
            .with_label("while entering this session", head)
    })?;
    let _foreground = engine.enter_foreground()?;
    let lost = Arc::new(AtomicBool::new(false));
    let _watch = Watch::start(target.handle.clone(), target.breaks_at, lost.clone());
    let mut editor = Reedline::create()
        .with_validator(Box::new(Incomplete))
        .with_highlighter(Box::<SimpleMatchHighlighter>::default())
        .with_break_signal(lost);
    match history(engine, &target.computer_name) {
        Ok(history) => editor = editor.with_history(Box::new(history)),
        Err(e) => eprintln!("warning: the history of this prompt is not kept: {e}"),
    }
    let mut errors = EngineState::new();
    if let Ok(config) = engine.get_config() {
        errors.set_config(config);
    }
    let mut console = Console {
        plugin,
        engine,
        target,
        head,
        table: engine.find_decl("table").ok().flatten(),
        errors,
        entries: 0,
        prompt: RemotePrompt {
            computer_name: target.computer_name.clone(),
            cwd: String::new(),
        },
        ctrl_c: &ctrl_c,
    };
    console.refresh_cwd();
    loop {
        if let Some(ending) = console.session_gone() {
            return Ok(ending);
        }
        let signal = editor.read_line(&console.prompt).map_err(|e| {
            LabeledError::new(format!("the line editor failed: {e}"))
                .with_label("in this session's prompt", head)
        })?;
        match signal {
            Signal::Success(line) => {
                if let Err(e) = editor.sync_history() {
                    eprintln!("warning: the history of this prompt was not saved: {e}");
                }
                if line.trim().is_empty() {
                    continue;
                }
                if leaves(&line) {
                    return Ok(Ending::Left);
                }
                console.run_line(line);
                console.refresh_cwd();
            }
            Signal::CtrlD => return Ok(Ending::Left),
            // The connection went (checked above); what follows starts on a line of its own.
            Signal::ExternalBreak(_) => eprintln!(),
            // Ctrl-C cleared the line.
            _ => {}
        }
    }
}

/// A line that is `exit` or `exit-session` (with or without arguments, such as an exit code)
/// leaves the prompt. Inside other code, `exit` runs in the session and ends it, as a shell ends.
fn leaves(line: &str) -> bool {
    matches!(
        line.split_whitespace().next(),
        Some("exit" | "exit-session")
    )
}

struct Console<'a> {
    plugin: &'a SessionPlugin,
    engine: &'a EngineInterface,
    target: &'a PromptSession,
    head: Span,
    /// The engine's `table` command.
    table: Option<DeclId>,
    /// Holds the lines typed, to render errors that point into them; has the user's config.
    errors: EngineState,
    entries: usize,
    prompt: RemotePrompt,
    ctrl_c: &'a CtrlC,
}

/// A line typed at the prompt, as errors show it.
struct Line {
    text: String,
    name: String,
    /// Where the line stands among the prompt's sources.
    span: Span,
}

impl Console<'_> {
    /// Why the prompt cannot go on, if it cannot.
    fn session_gone(&self) -> Option<Ending> {
        let handle = &self.target.handle;
        if handle.has_ended() {
            Some(Ending::Ended)
        } else if broke_since(handle, self.target.breaks_at) {
            Some(Ending::Lost)
        } else {
            None
        }
    }

    fn run_line(&mut self, text: String) {
        self.entries += 1;
        let start = self.errors.next_span_start();
        let line = Line {
            name: format!("{} entry #{}", self.target.computer_name, self.entries),
            span: Span::new(start, start + text.len()),
            text,
        };
        let interrupters = Interrupters::default();
        self.ctrl_c.forward_to(Some(interrupters.clone()));
        let result = invoke_one(
            self.plugin,
            self.engine,
            self.target.id,
            Code::typed(line.text.clone(), start),
            line.span,
            self.head,
            &interrupters,
        );
        match result {
            Ok(data) => self.show(data, &line),
            Err(error) => self.show_error(error, &line),
        }
        self.ctrl_c.forward_to(None);
    }

    /// Renders a result with the engine's `table` and prints it; an error that ends a stream
    /// is printed after the values before it.
    fn show(&self, data: PipelineData, line: &Line) {
        let failed: Arc<Mutex<Option<ShellError>>> = Arc::default();
        let data = match data {
            PipelineData::Empty | PipelineData::Value(Value::Nothing { .. }, _) => return,
            PipelineData::Value(Value::Error { error, .. }, _) => {
                return self.show_error((*error).into(), line);
            }
            PipelineData::ListStream(stream, metadata) => {
                let failed = failed.clone();
                // Stopped here, the error keeps its message and its place in the line; through
                // `table` it would come back as a bare I/O error.
                let stream = stream.modify(move |values| {
                    values.map_while(move |value| match value {
                        Value::Error { error, .. } => {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(*error);
                            None
                        }
                        value => Some(value),
                    })
                });
                PipelineData::list_stream(stream, metadata)
            }
            other => other,
        };
        let rendered = match self.table {
            Some(table) => {
                self.engine
                    .call_decl(table, EvaluatedCall::new(self.head), data, true, false)
            }
            None => Ok(data),
        };
        let stream_error = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Err(error) = rendered.and_then(print) {
            self.show_error(stream_error.unwrap_or(error).into(), line);
        } else if let Some(error) = stream_error {
            self.show_error(error.into(), line);
        }
    }

    /// Prints an error as `nu` prints its own, pointing into the line where the session said.
    fn show_error(&self, error: LabeledError, line: &Line) {
        let error = confine(error, line.span);
        let mut working_set = StateWorkingSet::new(&self.errors);
        let _line = working_set.add_file(&line.name, line.text.as_bytes());
        let text =
            nu_protocol::format_cli_error(None, &working_set, &error, Some("nu::shell::error"));
        let _ = writeln!(std::io::stderr(), "{text}");
    }

    /// The session's working directory, for the prompt.
    fn refresh_cwd(&mut self) {
        if self.session_gone().is_some() {
            return;
        }
        let pwd = invoke_one(
            self.plugin,
            self.engine,
            self.target.id,
            Code::typed("$env.PWD".into(), 0),
            self.head,
            self.head,
            &Interrupters::default(),
        );
        if let Ok(cwd) = pwd
            .and_then(|data| Ok(data.into_value(self.head)?))
            .and_then(|value| Ok(value.coerce_into_string()?))
        {
            // Drawn in the prompt: the host's text, never an escape sequence obeyed.
            self.prompt.cwd = nu_session_client::text::printable(&cwd).into_owned();
        }
    }
}

/// Prints what `table` made of a result (text, streamed as it comes), ending with a newline.
fn print(rendered: PipelineData) -> Result<(), ShellError> {
    // Not locked for the whole stream: the session's printed output is written by the thread
    // that feeds the stream to `table`.
    let mut out = LastByte {
        inner: std::io::stdout(),
        last: None,
    };
    match rendered {
        PipelineData::Empty => {}
        PipelineData::Value(value, _) => print_value(&mut out, value)?,
        PipelineData::ListStream(stream, _) => {
            for value in stream {
                print_value(&mut out, value)?;
            }
        }
        PipelineData::ByteStream(stream, _) => stream.write_to(&mut out)?,
    }
    if out.last.is_some_and(|b| b != b'\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    Ok(())
}

fn print_value(out: &mut LastByte, value: Value) -> Result<(), ShellError> {
    if let Value::Error { error, .. } = value {
        return Err(*error);
    }
    let mut text = value.coerce_into_string()?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // A terminal that cannot be written to has no one to tell.
    let _ = out.write_all(text.as_bytes());
    Ok(())
}

/// stdout, remembering the last byte written.
struct LastByte {
    inner: std::io::Stdout,
    last: Option<u8>,
}

impl Write for LastByte {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        if written > 0 {
            self.last = buf.get(written - 1).copied();
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The error with every label inside `line`: a label pointing anywhere else (into the engine's
/// sources, or nowhere) points at the whole line instead, so the error can be drawn.
fn confine(mut error: LabeledError, line: Span) -> LabeledError {
    for label in error.labels.iter_mut() {
        if label.span.start < line.start || label.span.end > line.end {
            label.span = line;
        }
    }
    let inner = std::mem::take(&mut *error.inner);
    *error.inner = inner
        .into_iter()
        .map(|inner| {
            ShellError::LabeledError(Box::new(confine(
                LabeledError::from_diagnostic(&inner),
                line,
            )))
        })
        .collect();
    error
}

/// `[web1]: /srv/app> `
struct RemotePrompt {
    computer_name: String,
    cwd: String,
}

impl Prompt for RemotePrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Owned(format!("[{}]: {}", self.computer_name, self.cwd))
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed("> ")
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("::: ")
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        let failing = match search.status {
            PromptHistorySearchStatus::Passing => "",
            PromptHistorySearchStatus::Failing => "failing ",
        };
        Cow::Owned(format!("({failing}reverse-search: {}) ", search.term))
    }
}

/// Input that is not finished yet (an open bracket or quote, a trailing `|`) continues on the
/// next line, as at `nu`'s own prompt. Nushell's lexer decides (the session, not this `nu`,
/// knows the commands, so the line is not parsed here).
struct Incomplete;

impl Validator for Incomplete {
    fn validate(&self, line: &str) -> ValidationResult {
        use nu_parser::TokenContents::{Comment, Eol, ErrGreaterPipe, OutErrGreaterPipe, Pipe};
        let (tokens, error) = nu_parser::lex(line.as_bytes(), 0, &[], &[], false);
        let ends_in_pipe = tokens
            .iter()
            .rev()
            .find(|t| !matches!(t.contents, Eol | Comment))
            .is_some_and(|t| matches!(t.contents, Pipe | ErrGreaterPipe | OutErrGreaterPipe));
        match error {
            Some(ParseError::UnexpectedEof(..) | ParseError::Unclosed(..)) => {
                ValidationResult::Incomplete
            }
            None if ends_in_pipe => ValidationResult::Incomplete,
            _ => ValidationResult::Complete,
        }
    }
}

/// The history of the prompts on `computer_name`, in a file only the user can read.
fn history(
    engine: &EngineInterface,
    computer_name: &str,
) -> Result<FileBackedHistory, LabeledError> {
    let env = |name: &str| -> Option<String> {
        engine
            .get_env_var(name)
            .ok()
            .flatten()
            .and_then(|v| v.coerce_into_string().ok())
            .filter(|s| !s.is_empty())
    };
    let data_dir = env("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".local/share")))
        .ok_or_else(|| LabeledError::new("neither $env.XDG_DATA_HOME nor $env.HOME is set"))?;
    let file = data_dir
        .join("nu-session/history")
        .join(history_file_name(computer_name));
    private_file(&file)
        .map_err(|e| LabeledError::new(format!("cannot create {}: {e}", file.display())))?;
    FileBackedHistory::with_file(HISTORY_LINES, file.clone())
        .map_err(|e| LabeledError::new(format!("cannot read {}: {e}", file.display())))
}

/// One file per computer name: `root@web1:2222` → `root@web1_2222.txt`.
pub fn history_file_name(computer_name: &str) -> String {
    let mut name: String = computer_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never `.`, `..` or a hidden file.
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name.push_str(".txt");
    name
}

/// Creates `file` (and its directories) readable by the user alone, or makes it so.
fn private_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    opened.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Sets `lost` (the line editor's break signal) when the session's connection goes, so a
/// prompt waiting for input notices at once: a thread subscribed to the handle's link.
struct Watch {
    stop: Box<dyn Fn() + Send + Sync>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    fn start(handle: SessionHandle, breaks_at: u64, lost: Arc<AtomicBool>) -> Watch {
        let mut link = handle.watch_link();
        let stop = Box::new(link.stopper());
        let thread = std::thread::Builder::new()
            .name("enter-session watch".into())
            .spawn(move || {
                // Any failure, even one recovered from at once, and the session's end.
                if link.wait_until(|state| state.link != Link::Up || state.breaks != breaks_at) {
                    lost.store(true, Ordering::SeqCst);
                }
            })
            .ok();
        Watch { stop, thread }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        (self.stop)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SIGINT, SIGQUIT and SIGTSTP while the prompt holds the terminal: SIGINT interrupts the line
/// running (if any), the others are ignored.
pub struct CtrlC {
    target: Arc<Mutex<Option<Interrupters>>>,
    handle: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl CtrlC {
    pub fn install() -> std::io::Result<CtrlC> {
        use signal_hook::consts::{SIGINT, SIGQUIT, SIGTSTP};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGQUIT, SIGTSTP])?;
        let handle = signals.handle();
        let target: Arc<Mutex<Option<Interrupters>>> = Arc::default();
        let forward = target.clone();
        let thread = std::thread::Builder::new()
            .name("enter-session ctrl-c".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == SIGINT
                        && let Some(interrupters) =
                            forward.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
                    {
                        interrupters.interrupt_all();
                    }
                }
            })?;
        Ok(CtrlC {
            target,
            handle,
            thread: Some(thread),
        })
    }

    /// Where Ctrl-C goes from now on (nowhere with `None`).
    fn forward_to(&self, interrupters: Option<Interrupters>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = interrupters;
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        // The handlers stay installed, doing nothing: SIGINT never again stops this process.
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_brackets_quotes_and_pipes_continue_on_the_next_line() {
        let incomplete =
            |line: &str| matches!(Incomplete.validate(line), ValidationResult::Incomplete);
        assert!(incomplete("if true {"));
        assert!(incomplete("[1 2"));
        assert!(incomplete("(1 +"));
        assert!(incomplete("'abc"));
        assert!(incomplete("ls |"));
        assert!(incomplete("ls | # then\n"));
        assert!(incomplete("def f [] {\n  1\n"));
        assert!(!incomplete("if true { 1 }"));
        assert!(!incomplete("ls | where size > 1kb"));
        assert!(!incomplete("{a: 1}"));
        // A stray closer is complete: it runs, and the session reports the error.
        assert!(!incomplete("1 }"));
    }

    #[test]
    fn exit_and_exit_session_alone_leave() {
        assert!(leaves("exit"));
        assert!(leaves("  exit-session  "));
        assert!(leaves("exit 3"));
        assert!(!leaves("exited"));
        assert!(!leaves("if true { exit 3 }"));
        assert!(!leaves("echo exit"));
    }

    #[test]
    fn history_files_are_named_after_the_computer() {
        assert_eq!(history_file_name("localhost"), "localhost.txt");
        assert_eq!(history_file_name("root@web1:2222"), "root@web1_2222.txt");
        assert_eq!(history_file_name("[::1]:22"), "___1__22.txt");
        assert_eq!(history_file_name(".."), "_...txt");
        assert_eq!(history_file_name("a/b"), "a_b.txt");
        assert_eq!(history_file_name(""), "_.txt");
    }

    #[test]
    fn labels_outside_the_line_point_at_the_line() {
        let line = Span::new(100, 110);
        let error = LabeledError::new("boom")
            .with_label("inside", Span::new(102, 104))
            .with_label("elsewhere", Span::new(3, 9))
            .with_inner(LabeledError::new("inner").with_label("far", Span::new(500, 501)));
        let error = confine(error, line);
        assert_eq!(error.labels[0].span, Span::new(102, 104));
        assert_eq!(error.labels[1].span, line);
        let inner = LabeledError::from_diagnostic(&error.inner[0]);
        assert_eq!(inner.labels[0].span, line);
    }
}
