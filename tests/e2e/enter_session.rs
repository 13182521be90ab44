//! enter-session and exit-session: a real nu at its own prompt in a real terminal (tmux), with
//! the built plugin, typing into a session's prompt as a user does; over SSH against a real sshd.
//! And what they say without a terminal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nu_session_tests::{Sandbox, Terminal, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// nu's own prompt in the sandbox (`nu -n` shows the working directory).
fn local_prompt(sb: &Sandbox) -> String {
    format!("{}> ", sb.path().display())
}

/// A terminal at nu's prompt, with the ssh config when given.
fn at_nu_prompt(sb: &Sandbox, config: Option<&Path>) -> Terminal {
    let terminal = sb.terminal(config, None);
    wait_lines(&terminal, &local_prompt(sb), 1);
    terminal
}

/// Waits until at least `count` lines of the screen start with `prefix`; returns the screen.
fn wait_lines(terminal: &Terminal, prefix: &str, count: usize) -> String {
    let mut screen = String::new();
    let found = eventually(WAIT, || {
        screen = terminal.screen();
        screen.lines().filter(|l| l.starts_with(prefix)).count() >= count
    });
    assert!(
        found,
        "the terminal never showed {count} lines starting with {prefix:?}:\n{screen}"
    );
    screen
}

/// The session prompt in the user's home directory, where sessions start.
fn home_prompt(computer: &str) -> String {
    let home = std::env::var("HOME").expect("HOME");
    format!("[{computer}]: {home}> ")
}

/// Whether some line of the screen is exactly `text` (trailing blanks aside).
fn has_line(screen: &str, text: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == text)
}

#[test]
fn a_session_prompt_runs_lines_there_and_renders_them_here() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    t.type_line("new-session --name work | ignore; enter-session --name work");
    wait_lines(&t, &home_prompt("localhost"), 1);

    // The prompt follows the session's working directory.
    t.type_line("cd /");
    let root = "[localhost]: /> ";
    wait_lines(&t, root, 1);
    // State persists between lines, and a table is drawn by nu's table command.
    t.type_line("let x = 20");
    wait_lines(&t, root, 2);
    t.type_line("[[name size]; [alpha 1] [beta ($x + 2)]]");
    let screen = wait_lines(&t, root, 3);
    for line in [
        "╭───┬───────┬──────╮",
        "│ # │ name  │ size │",
        "│ 0 │ alpha │    1 │",
        "│ 1 │ beta  │   22 │",
        "╰───┴───────┴──────╯",
    ] {
        assert!(has_line(&screen, line), "no {line:?} in:\n{screen}");
    }
    // An error is drawn as nu draws its own, pointing into the line typed.
    t.type_line("ls no-such-file");
    let screen = wait_lines(&t, root, 4);
    assert!(screen.contains("╭─[localhost entry #4:1:4]"), "{screen}");
    assert!(has_line(&screen, " 1 │ ls no-such-file"), "{screen}");
    assert!(
        screen.contains("'/no-such-file' does not exist"),
        "{screen}"
    );

    t.type_line("exit-session");
    wait_lines(&t, &local_prompt(&sb), 2);
    t.type_line("get-session | select name state availability | to nuon");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(
        has_line(
            &screen,
            "[[name, state, availability]; [work, Opened, Available]]"
        ),
        "{screen}"
    );

    // The user's table settings apply to what the session returns.
    t.type_line("$env.config.table.mode = 'markdown'; enter-session 1");
    wait_lines(&t, root, 5);
    t.type_line("[[name size]; [alpha 1]]");
    let screen = wait_lines(&t, root, 6);
    assert!(has_line(&screen, "| 0 | alpha |    1 |"), "{screen}");
    t.type_line("exit");
    wait_lines(&t, &local_prompt(&sb), 4);
}

#[test]
fn ctrl_c_stops_the_running_line_and_not_the_prompt() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    let prompt = home_prompt("localhost");
    // A disconnected session is connected first.
    t.type_line("new-session | disconnect-session | ignore; enter-session 1");
    wait_lines(&t, &prompt, 1);
    t.type_line("sleep 1hr");
    // Until it runs in the session, Ctrl-C has nothing to stop.
    std::thread::sleep(Duration::from_secs(1));
    let pressed = Instant::now();
    t.press("C-c");
    let screen = wait_lines(&t, &prompt, 2);
    let took = pressed.elapsed();
    assert!(took < Duration::from_secs(5), "the prompt took {took:?}");
    assert!(screen.contains("Operation interrupted"), "{screen}");

    // At the prompt, Ctrl-C throws away the line being typed; the session is still there.
    t.type_text("half typed");
    t.press("C-c");
    wait_lines(&t, &prompt, 3);
    t.type_line("'still ' + 'here'");
    let screen = wait_lines(&t, &prompt, 4);
    assert!(has_line(&screen, "still here"), "{screen}");
    assert!(!screen.contains("`half` not found"), "{screen}");

    // Ctrl-D leaves; the session stays Opened.
    t.press("C-d");
    wait_lines(&t, &local_prompt(&sb), 2);
    t.type_line("get-session | get state | to nuon");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(has_line(&screen, "[Opened]"), "{screen}");
}

#[test]
fn unfinished_input_continues_and_history_is_kept_per_computer() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    let prompt = home_prompt("localhost");
    t.type_line("new-session | ignore; enter-session 1");
    wait_lines(&t, &prompt, 1);
    t.type_line("def twice [x] {");
    wait_lines(&t, "::: ", 1);
    t.type_line("  $x * 2");
    wait_lines(&t, "::: ", 2);
    t.type_line("}");
    wait_lines(&t, &prompt, 2);
    t.type_line("twice 21");
    let screen = wait_lines(&t, &prompt, 3);
    assert!(has_line(&screen, "42"), "{screen}");
    t.type_line("exit-session");
    wait_lines(&t, &local_prompt(&sb), 2);

    let history = sb.path().join("data/nu-session/history/localhost.txt");
    let text = std::fs::read_to_string(&history).expect("history file");
    assert!(text.lines().any(|l| l == "twice 21"), "{text}");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&history), 0o600);
    assert_eq!(mode(history.parent().expect("dir")), 0o700);

    // Entering again, the earlier lines are there: Up, Up is `twice 21`.
    t.type_line("enter-session 1");
    wait_lines(&t, &prompt, 4);
    t.press("Up");
    t.press("Up");
    t.press("Enter");
    let screen = wait_lines(&t, &prompt, 5);
    assert_eq!(
        screen.lines().filter(|l| l.trim_end() == "42").count(),
        2,
        "{screen}"
    );
    t.press("C-d");
    wait_lines(&t, &local_prompt(&sb), 3);
}

#[test]
fn a_temporary_session_lives_as_long_as_its_prompt() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    t.type_line("enter-session localhost");
    wait_lines(&t, &home_prompt("localhost"), 1);
    assert_eq!(sb.worker_pids().len(), 1);
    // `exit` with a code leaves the prompt too (it does not end the session: the prompt does).
    t.type_line("exit 3");
    wait_lines(&t, &local_prompt(&sb), 2);
    t.type_line("get-session --state All | length");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(has_line(&screen, "0"), "{screen}");
    assert!(
        eventually(Duration::from_secs(10), || sb.worker_pids().is_empty()),
        "the temporary session's worker is still running"
    );
}

#[test]
fn code_that_calls_exit_ends_the_session_and_its_prompt() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    t.type_line("new-session | ignore; enter-session 1");
    wait_lines(&t, &home_prompt("localhost"), 1);
    // `exit` alone leaves the prompt; inside code, it ends the session, as a shell ends.
    t.type_line("if true { exit 3 }");
    let screen = wait_lines(&t, &local_prompt(&sb), 2);
    assert!(
        screen.contains("the session ended: its code called exit (code 3)"),
        "{screen}"
    );
    t.type_line("get-session | get state | to nuon");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(has_line(&screen, "[Closed]"), "{screen}");
}

#[test]
fn a_session_at_the_prompt_cannot_be_disconnected() {
    let sb = Sandbox::new();
    let t = at_nu_prompt(&sb, None);
    let out = sb.path().join("out.txt");
    // A background job of the same nu tries while the prompt is up.
    t.type_line(&format!(
        "new-session | ignore; job spawn {{ sleep 1sec; try {{ disconnect-session 1 | ignore; 'disconnected' }} catch {{|e| $e.msg }} | save -f {} }} | ignore; enter-session 1",
        out.display()
    ));
    wait_lines(&t, &home_prompt("localhost"), 1);
    assert!(
        eventually(WAIT, || std::fs::read_to_string(&out)
            .is_ok_and(|s| !s.is_empty())),
        "the job did not finish"
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("out.txt"),
        "session 1 (Session1) is in use by enter-session: it cannot be disconnected"
    );
    t.type_line("exit-session");
    wait_lines(&t, &local_prompt(&sb), 2);
    // Left, it can.
    t.type_line("disconnect-session 1 | get 0.state");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(has_line(&screen, "Disconnected"), "{screen}");
}

#[test]
fn over_ssh_a_session_prompt_and_a_temporary_session() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.40");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let user = &server.user.name;
    let home = format!("[{computer}]: {}> ", server.user.home.display());
    let t = at_nu_prompt(&sb, Some(&config));
    t.type_line(&format!(
        "let s = new-session {computer}; enter-session $s.0.id"
    ));
    wait_lines(&t, &home, 1);
    t.type_line("^whoami");
    wait_lines(&t, &home, 2);
    t.type_line("cd /tmp");
    let tmp = format!("[{computer}]: /tmp> ");
    wait_lines(&t, &tmp, 1);
    t.type_line("[[user dir]; [(^whoami) $env.PWD]]");
    let screen = wait_lines(&t, &tmp, 2);
    assert!(has_line(&screen, user), "{screen}");
    assert!(
        has_line(&screen, &format!("│ 0 │ {user} │ /tmp │")),
        "{screen}"
    );
    t.press("C-d");
    wait_lines(&t, &local_prompt(&sb), 2);
    t.type_line("get-session | select transport state | to nuon");
    let screen = wait_lines(&t, &local_prompt(&sb), 3);
    assert!(
        has_line(&screen, "[[transport, state]; [SSH, Opened]]"),
        "{screen}"
    );

    // A computer name: a temporary session on that host, gone from it after the prompt.
    t.type_line(&format!("enter-session {computer}"));
    wait_lines(&t, &home, 3);
    assert_eq!(server.worker_pids().len(), 2);
    t.type_line("exit-session");
    wait_lines(&t, &local_prompt(&sb), 4);
    assert!(
        eventually(Duration::from_secs(10), || server.worker_pids().len() == 1),
        "the temporary session is still on its host"
    );
}

#[test]
fn a_broken_connection_returns_to_the_local_prompt_and_the_session_stays() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.41");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let home = format!("[{computer}]: {}> ", server.user.home.display());
    let t = at_nu_prompt(&sb, Some(&config));
    t.type_line(&format!("new-session {computer} | ignore; enter-session 1"));
    wait_lines(&t, &home, 1);
    assert!(server.kill_connections() > 0, "no connection to cut");
    let screen = wait_lines(&t, &local_prompt(&sb), 2);
    assert!(
        screen.contains(&format!(
            "the connection to session 1 (Session1) on {computer} was lost"
        )),
        "{screen}"
    );
    // The session is still on its host, and comes back by itself: the user can go back in.
    assert_eq!(server.worker_pids().len(), 1);
    t.type_line("sleep 2sec; get-session | get 0.state | $'state: ($in)'");
    t.wait_for("state: Opened", Duration::from_secs(30));
    t.type_line("enter-session 1");
    let screen = wait_lines(&t, &home, 2);
    eprintln!("{screen}");
}

#[test]
fn without_a_terminal_and_with_wrong_targets_the_errors_say_why() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         new-session | ignore
         [
           (try { exit-session } catch {|e| $e.msg })
           (try { enter-session } catch {|e| $e.msg })
           (try { enter-session 7 } catch {|e| $e.msg })
           (try { enter-session --name 'Session*' } catch {|e| $e.msg })
           (try { enter-session 1 } catch {|e| $e.msg })
           (try { enter-session localhost } catch {|e| $e.msg })
           (try { $s | remove-session; enter-session $s.0.id } catch {|e| $e.msg })
           (get-session --state All | length)
         ]",
    );
    assert_eq!(
        out,
        json!([
            "exit-session only works inside enter-session",
            "enter-session needs a session or a computer name",
            "no session with id 7",
            "enter-session enters one session, and 2 match",
            "enter-session needs a terminal, and nu has none",
            "enter-session needs a terminal, and nu has none",
            "session 1 (Session1) is Closed: it cannot be entered",
            1
        ])
    );
    // No temporary session was left behind: only session 2 runs.
    assert_eq!(sb.worker_pids().len(), 1);
    let help = sb.ok("help enter-session");
    assert!(
        help.contains("A temporary session over SSH, removed when you leave the prompt"),
        "{help}"
    );
    let help = sb.ok("help exit-session");
    assert!(
        help.contains("Anywhere else, exit-session is an error that says so"),
        "{help}"
    );
}

#[test]
fn a_session_connected_elsewhere_is_refused_before_entering() {
    let sb = Sandbox::new();
    let mut holder = sb.hold_session("held");
    let out = sb.json(
        "try { get-session --computer-name localhost | where name == held | enter-session } catch {|e| $e.msg }",
    );
    assert_eq!(
        out,
        json!(
            "session 1 (held) is connected to another client (availability Busy): it cannot be entered here"
        )
    );
    holder.kill().expect("kill");
    holder.wait().expect("wait");
}
