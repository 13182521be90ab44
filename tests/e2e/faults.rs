//! Real faults under real sessions: the SSH connection's server process killed, the network cut
//! (a network namespace whose link goes down), a worker killed, the manager killed. What a user
//! would notice: values lost or repeated, sessions gone, state lost, a shell that hangs.

use std::path::Path;
use std::time::{Duration, Instant};

use nu_session_tests::{NetNs, Running, Sandbox, alive, eventually, ints, read_number};
use serde_json::json;

fn wait_progress(nu: &Running, path: &Path, at_least: i64) {
    assert!(
        eventually(Duration::from_secs(60), || read_number(path) >= at_least),
        "the session's code did not get to {at_least} (at {}); stderr:\n{}",
        read_number(path),
        nu.stderr()
    );
}

/// A stream of `n` numbers that writes how far it got to `$p`, then the session's state.
fn streaming_script(session: &str, n: i64, progress: &Path) -> String {
    format!(
        "let p = '{}'
         let s = new-session {session}
         let out = invoke-session $s {{|| 1..{n} | each {{|i| $i | into string | save -f $p; sleep 10ms; $i }} }} | collect
         {{ out: $out, state: (get-session | get 0.state) }} | to json -r",
        progress.display()
    )
}

#[test]
fn killing_the_ssh_connection_under_a_stream_loses_and_duplicates_nothing() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.30");
    let config = sb.ssh_config(&[&server], "");
    let progress_file = server.user.scratch(sb.path()).join("progress");
    let nu = Running::new(sb.ssh_spawn(
        &config,
        &streaming_script(&server.computer(), 400, &progress_file),
    ));
    wait_progress(&nu, &progress_file, 100);
    let killed = server.kill_connections();
    assert!(killed > 0, "no per-connection sshd to kill");
    let killed_at = read_number(&progress_file);
    let out = {
        assert!(
            nu.wait_for("is restored", Duration::from_secs(30))
                .is_some(),
            "the client did not reattach: {}",
            nu.stderr()
        );
        nu.json()
    };
    assert!(killed_at < 400, "the stream was over before the kill");
    assert_eq!(ints(&out["out"]), (1..=400).collect::<Vec<_>>());
    assert_eq!(out["state"], json!("Opened"));
}

#[test]
fn a_stalled_connection_under_a_high_volume_stream_reattaches_and_loses_nothing() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.31");
    let config = sb.ssh_config(&[&server], "ServerAliveInterval 1\nServerAliveCountMax 3");
    let n = 1_000_000u64;
    let nu = Running::new(sb.ssh_spawn(
        &config,
        &format!(
            "let s = new-session {}
             let out = invoke-session $s {{ seq 1 {n} | each {{|i| if $i mod 200000 == 0 {{ sleep 1sec }}; $i }} }} | collect
             {{ n: ($out | length), sum: ($out | math sum), last: ($out | last), state: (get-session | get 0.state) }} | to json -r",
            server.computer()
        ),
    ));
    assert!(
        eventually(Duration::from_secs(60), || !server.worker_pids().is_empty()),
        "no session: {}",
        nu.stderr()
    );
    // The stream is going (bursts of 200,000 values with a second between: it lasts seconds
    // however fast the wire is): the server's side of the connection freezes (reads and sends
    // nothing, closes nothing). The session's worker is left blocked writing to it.
    std::thread::sleep(Duration::from_millis(1500));
    let _stopped = server.stop_connections();
    assert!(
        nu.wait_for("is restored", Duration::from_secs(60))
            .is_some(),
        "the client did not reattach over a new connection: {}",
        nu.stderr()
    );
    let out = nu.json();
    assert_eq!(
        out,
        json!({"n": n, "sum": n * (n + 1) / 2, "last": n, "state": "Opened"})
    );
}

/// The ssh config lines that make a dead network noticed within ~3 s.
const FAST_KEEPALIVE: &str = "ServerAliveInterval 1\nServerAliveCountMax 2";

#[test]
fn a_cut_network_leaves_the_session_broken_and_it_reattaches_when_the_network_returns() {
    let sb = Sandbox::new();
    let net = NetNs::new();
    let server = sb.sshd_in(Some(&net), &net.address, "");
    let config = sb.ssh_config(&[&server], FAST_KEEPALIVE);
    let progress_file = server.user.scratch(sb.path()).join("progress");
    let nu = Running::new(sb.ssh_spawn(
        &config,
        &streaming_script(&server.computer(), 800, &progress_file),
    ));
    wait_progress(&nu, &progress_file, 100);
    net.cut();
    let cut_at = read_number(&progress_file);
    assert!(
        nu.wait_for("was interrupted", Duration::from_secs(30))
            .is_some(),
        "the client did not notice the cut: {}",
        nu.stderr()
    );
    // Still cut: attempts fail; the session's code runs on, on its host.
    std::thread::sleep(Duration::from_secs(2));
    let later = read_number(&progress_file);
    assert!(
        later > cut_at,
        "the session stopped while the network was cut (at {cut_at}, then {later}): {}",
        nu.stderr()
    );
    assert!(nu.wait_for("is restored", Duration::ZERO).is_none());
    let restored = Instant::now();
    net.restore();
    let back = nu
        .wait_for("is restored", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("did not reattach: {}", nu.stderr()));
    eprintln!(
        "reattached {:.2}s after the network returned; the user saw:\n{}",
        back.saturating_duration_since(restored).as_secs_f64(),
        nu.stderr()
    );
    let out = nu.json();
    assert_eq!(ints(&out["out"]), (1..=800).collect::<Vec<_>>());
    assert_eq!(out["state"], json!("Opened"));
}

#[test]
fn when_the_network_stays_down_the_session_is_left_disconnected_and_connects_again_later() {
    let sb = Sandbox::new();
    let net = NetNs::new();
    let server = sb.sshd_in(Some(&net), &net.address, "");
    let config = sb.ssh_config(&[&server], FAST_KEEPALIVE);
    let ready = sb.path().join("ready");
    let gave_up = sb.path().join("gave-up");
    let back = sb.path().join("back");
    let script = format!(
        "let s = new-session {computer}
         invoke-session $s {{ $env.MARK = 'kept' }}
         'x' | save -f '{ready}'
         let error = try {{ invoke-session $s {{ sleep 8sec; 'done' }}; 'no error' }} catch {{|e| $e.msg + ' | ' + ($e.rendered | ansi strip) }}
         let state = get-session | get 0.state
         'x' | save -f '{gave_up}'
         while not ('{back}' | path exists) {{ sleep 100ms }}
         let again = connect-session 1 | get 0.state
         let received = receive-session 1
         {{ error: $error, state: $state, again: $again, received: $received, mark: (invoke-session 1 {{ $env.MARK }}) }} | to json -r",
        computer = server.computer(),
        ready = ready.display(),
        gave_up = gave_up.display(),
        back = back.display(),
    );
    let child = sb
        .ssh_command(&config, &script)
        .env("NU_SESSION_RECONNECT_SECS", "3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nu");
    let nu = Running::new(child);
    assert!(
        eventually(Duration::from_secs(60), || ready.exists()),
        "{}",
        nu.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    net.cut();
    assert!(
        eventually(Duration::from_secs(60), || gave_up.exists()),
        "still waiting: {}",
        nu.stderr()
    );
    net.restore();
    std::fs::write(&back, "x").expect("back");
    let stderr_hint = nu.wait_for("connect-session 1", Duration::from_secs(5));
    let out = nu.json();
    let error = out["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("could not reconnect within 3s"), "{error}");
    assert!(error.contains("connect-session"), "{error}");
    assert_eq!(out["state"], json!("Disconnected"));
    assert!(stderr_hint.is_some(), "no hint on stderr");
    assert_eq!(out["again"], json!("Opened"));
    // The output the broken call never got is delivered once, to whoever receives it.
    assert_eq!(out["received"], json!(["done"]));
    assert_eq!(out["mark"], json!("kept"));
}

#[test]
fn a_crashed_worker_closes_its_session_only_and_says_why() {
    let sb = Sandbox::new();
    let nu = Running::new(sb.spawn(
        "let a = new-session --name a
         let b = new-session --name b
         invoke-session $b { $env.Y = 7 }
         let error = try { invoke-session $a {|| sleep 100ms; ^kill -9 $nu.pid; sleep 10sec }; 'no error' } catch {|e| $e.msg }
         { error: $error, states: (get-session | select name state), y: (invoke-session $b { $env.Y }),
           again: (try { invoke-session $a { 1 } } catch {|e| $e.msg }) } | to json -r",
    ));
    let out = nu.json();
    let error = out["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("its worker process was killed by signal 9 (SIGKILL)"),
        "{out}"
    );
    assert_eq!(
        out["states"],
        json!([{"name": "a", "state": "Closed"}, {"name": "b", "state": "Opened"}])
    );
    assert_eq!(out["y"], json!(7));
    assert!(
        out["again"].as_str().unwrap_or_default().contains("Closed"),
        "{out}"
    );
    assert_eq!(sb.worker_pids().len(), 1, "session b's worker is gone too");
}

#[test]
fn a_manager_restart_loses_no_session_and_attached_clients_carry_on() {
    let sb = Sandbox::new();
    sb.ok("let s = new-session --name keep; invoke-session $s { $env.KEEP = 'yes'; cd / }");
    let progress_file = sb.path().join("progress");
    let nu = Running::new(sb.spawn(&streaming_script("--name live", 300, &progress_file)));
    wait_progress(&nu, &progress_file, 50);
    let pid_file = sb.layout().manager_pid();
    let manager: i32 = std::fs::read_to_string(&pid_file)
        .expect("manager.pid")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(manager, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(10), || !alive(manager)));
    assert!(read_number(&progress_file) < 300, "the stream ended before");
    let out = nu.json();
    assert_eq!(ints(&out["out"]), (1..=300).collect::<Vec<_>>());
    assert_eq!(out["state"], json!("Opened"));

    // A new manager starts on demand and finds both sessions.
    let out = sb.json(
        "let found = get-session --computer-name localhost | select name state
         let keep = get-session --name keep | connect-session
         { found: $found, keep: (invoke-session $keep { {keep: $env.KEEP, pwd: $env.PWD} }) }",
    );
    assert_eq!(
        out,
        json!({
            "found": [{"name": "keep", "state": "Disconnected"}, {"name": "live", "state": "Disconnected"}],
            "keep": {"keep": "yes", "pwd": "/"}
        })
    );
    let now: i32 = std::fs::read_to_string(&pid_file)
        .expect("manager.pid")
        .trim()
        .parse()
        .expect("a pid");
    assert_ne!(now, manager, "the old manager answered");
}
