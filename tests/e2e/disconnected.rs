//! Disconnected sessions, end to end: sessions that keep running with nobody connected, found,
//! connected and received from other `nu` processes; Disconnect-PSSession's examples as
//! scenarios.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use nu_session_tests::{Sandbox, alive, eventually, ints, read_number};
use serde_json::{Value, json};

#[test]
fn disconnect_by_name_keeps_the_session_on_the_host() {
    // Disconnect-PSSession example 1.
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session --name UpdateSession | ignore
         invoke-session 1 { let started = 'yes' }
         let r = disconnect-session --name UpdateSession | first
         {
           state: $r.state
           availability: $r.availability
           disconnected_on: ($r.disconnected_on != null)
           expires_after_idle_timeout: (($r.expires_on - $r.disconnected_on) == $r.idle_timeout)
           listed: (get-session --name UpdateSession | get 0.state)
           again: (disconnect-session --name UpdateSession | get 0.state)
           invoke: (try { invoke-session 1 { 1 } } catch {|e| $e.msg })
         }",
    );
    assert_eq!(out["state"], "Disconnected", "{out}");
    assert_eq!(out["availability"], "None", "{out}");
    assert_eq!(out["disconnected_on"], true, "{out}");
    assert_eq!(out["expires_after_idle_timeout"], true, "{out}");
    assert_eq!(out["listed"], "Disconnected", "{out}");
    assert_eq!(out["again"], "Disconnected", "{out}");
    assert!(
        out["invoke"]
            .as_str()
            .unwrap_or_default()
            .contains("not Opened"),
        "{out}"
    );
    // The worker still runs, with the state the session had.
    assert_eq!(sb.worker_pids().len(), 1);
    let state = sb.json(
        "connect-session --computer-name localhost --name UpdateSession | ignore
         invoke-session (get-session --name UpdateSession) '$started'",
    );
    assert_eq!(state, json!("yes"));
}

#[test]
fn disconnect_with_new_settings_from_get_session_and_limits_named() {
    // Disconnect-PSSession example 2: piped from get-session, Drop, one day.
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session --name Test | ignore
         let r = get-session --name Test | disconnect-session --output-buffering Drop --idle-timeout 1day | first
         new-session --name Other | ignore
         let high = try { disconnect-session --name Other --idle-timeout 8wk; 'no error' } catch {|e| $e.msg }
         let low = try { disconnect-session --name Other --idle-timeout 30sec; 'no error' } catch {|e| $e.msg }
         {
           state: $r.state
           mode: $r.output_buffering_mode
           one_day: ($r.idle_timeout == 1day)
           host_agrees: (get-session --computer-name localhost --name Test | get 0.output_buffering_mode)
           high: $high
           low: $low
           other_still: (get-session --name Other | get 0.state)
         }",
    );
    assert_eq!(out["state"], "Disconnected", "{out}");
    assert_eq!(out["mode"], "Drop", "{out}");
    assert_eq!(out["one_day"], true, "{out}");
    assert_eq!(out["host_agrees"], "Drop", "{out}");
    let high = out["high"].as_str().unwrap_or_default();
    assert!(high.contains("8wk"), "{high}");
    assert!(high.contains("at least 1min and at most 1wk"), "{high}");
    assert!(
        out["low"]
            .as_str()
            .unwrap_or_default()
            .contains("at least 1min"),
        "{out}"
    );
    // A refused disconnect loses nothing: the session stays connected.
    assert_eq!(out["other_still"], "Opened", "{out}");
}

#[test]
fn another_process_finds_connects_works_and_disconnects() {
    // Disconnect-PSSession example 3: the technician leaves the task, the manager picks it up.
    let sb = Sandbox::new();
    let left = sb.json(
        "new-session --name ITTask | ignore
         invoke-session 1 { $env.TASK = 'patch'; let n = 41; cd / }
         disconnect-session 1 | get 0.state",
    );
    assert_eq!(left, json!("Disconnected"));
    let out = sb.json(
        "let found = get-session --computer-name localhost | where name == ITTask | first
         let c = connect-session --computer-name localhost --name ITTask | first
         {
           found: ($found | select state availability)
           connected: ($c | select state availability)
           work: (invoke-session $c '{n: ($n + 1), task: $env.TASK, pwd: $env.PWD}')
           after: (disconnect-session $c | get 0.state)
         }",
    );
    assert_eq!(
        out,
        json!({
            "found": {"state": "Disconnected", "availability": "None"},
            "connected": {"state": "Opened", "availability": "Available"},
            "work": {"n": 42, "task": "patch", "pwd": "/"},
            "after": "Disconnected"
        })
    );
    // The mission's pipeline, from yet another process.
    let states = sb.json(
        "get-session --computer-name localhost | where state == Disconnected | connect-session | get state",
    );
    assert_eq!(states, json!(["Opened"]));
}

#[test]
fn output_of_a_disconnected_command_is_received_once_in_another_process() {
    let sb = Sandbox::new();
    let started = sb.json(
        "let s = new-session --name job
         invoke-session $s { print -e 'working'; 1..50 | each {|i| sleep 20ms; $i } } --disconnected | get 0.state",
    );
    assert_eq!(started, json!("Disconnected"));
    // The command is still running: receive waits for it to finish.
    let out = sb.run("receive-session --computer-name localhost --name job | to json -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ints(&values), (1..=50).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&out.stderr).contains("working"));
    // Delivered once: a second receive, from a third process, gets nothing.
    let again = sb.json("receive-session --computer-name localhost --name job | length");
    assert_eq!(again, json!(0));
    // And the session is usable afterwards.
    let after = sb.json(
        "connect-session --computer-name localhost --name job | ignore
         invoke-session (get-session --name job) { 2 + 2 }",
    );
    assert_eq!(after, json!(4));
}

#[test]
fn a_session_attached_elsewhere_is_busy_and_refuses_to_connect() {
    let sb = Sandbox::new();
    let mut holder = sb.hold_session("held");
    let out = sb.json(
        "let s = get-session --computer-name localhost | where name == held | first
         {
           seen: ($s | select state availability)
           connect: (try { connect-session --computer-name localhost --name held; 'no error' } catch {|e| $e.msg })
         }",
    );
    assert_eq!(
        out["seen"],
        json!({"state": "Disconnected", "availability": "Busy"})
    );
    let connect = out["connect"].as_str().unwrap_or_default();
    assert!(connect.contains("connected to another client"), "{connect}");
    // When the holder goes, the session stays and is free.
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    assert!(eventually(Duration::from_secs(10), || {
        sb.json("connect-session --computer-name localhost --name held | get 0.state")
            == json!("Opened")
    }));
}

#[test]
fn output_seen_while_older_output_waits_is_not_delivered_again() {
    let sb = Sandbox::new();
    sb.ok("let s = new-session --name job
         invoke-session $s { [left for later] } --disconnected | ignore");
    // Another process connects, runs its own code and sees its output, leaving the earlier
    // output unreceived; then disconnects.
    let mine = sb.json(
        "sleep 500ms
         let s = connect-session --computer-name localhost --name job
         let mine = invoke-session $s { 'mine' }
         disconnect-session $s | ignore
         $mine",
    );
    assert_eq!(mine, json!("mine"));
    // A third collects what nobody has seen: the earlier output only, not 'mine' again.
    let received = sb.json("receive-session --computer-name localhost --name job");
    assert_eq!(received, json!([["left", "for", "later"]]));
}

#[test]
fn a_frozen_client_does_not_keep_its_session_busy() {
    let sb = Sandbox::new();
    // Clients beat every second here: three silent beats and the worker lets go.
    sb.host_config(r#"{"client_heartbeat_secs": 1}"#);
    let holder = sb.hold_session("frozen");
    // The holder's plugin freezes (stopped, swapped out, its machine gone): it closes nothing.
    let plugins = nu_session_tests::children_of(holder.id() as i32);
    assert!(!plugins.is_empty(), "no plugin process");
    for pid in &plugins {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    let freed = eventually(Duration::from_secs(20), || {
        sb.json("get-session --computer-name localhost | where name == frozen | get 0.availability")
            == json!("None")
    });
    let state = sb.json("connect-session --computer-name localhost --name frozen | get 0.state");
    for pid in &plugins {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let mut holder = holder;
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        freed,
        "the session stayed attached to a client that answers nothing"
    );
    assert_eq!(state, json!("Opened"));
}

#[test]
fn block_pauses_a_producer_much_larger_than_the_buffer_and_loses_nothing() {
    let sb = Sandbox::new();
    sb.host_config(r#"{"output_buffer_bytes": 65536}"#);
    let progress = sb.path().join("progress.txt");
    sb.ok(&format!(
        "let p = '{}'
         let s = new-session --name big
         invoke-session $s {{|| 1..100000 | each {{|i| $i | into string | save -f $p; $i }} }} --disconnected | ignore",
        progress.display()
    ));
    let read = || read_number(&progress);
    // Paused: the same value for a whole second (a loaded machine fills the buffer slowly).
    let mut last = -1;
    let settled = eventually(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(1));
        let now = read();
        let same = now == last && now > 0;
        last = now;
        same
    });
    let paused_at = read();
    assert!(settled, "the producer never settled (at {paused_at})");
    assert!(paused_at > 0, "the producer never started");
    // 64 KiB holds about 6,000 small ints as they are kept (encoded, a few bytes each).
    assert!(paused_at < 20000, "not paused: at {paused_at} of 100000");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(), paused_at, "the producer moved while nobody read");
    let values = sb.json("receive-session --computer-name localhost --name big");
    assert_eq!(ints(&values), (1..=100000).collect::<Vec<_>>());
    assert_eq!(read(), 100000);
}

#[test]
fn drop_keeps_a_contiguous_newest_tail_and_says_how_much_was_dropped() {
    let sb = Sandbox::new();
    sb.host_config(r#"{"output_buffer_bytes": 65536}"#);
    let done = sb.path().join("done.txt");
    sb.ok(&format!(
        "let p = '{}'
         let s = new-session --name dropper --output-buffering Drop
         invoke-session $s {{|| 1..20000 | each {{|i| if $i == 20000 {{ 'x' | save -f $p }}; $i }} }} --disconnected | ignore",
        done.display()
    ));
    assert!(eventually(Duration::from_secs(30), || done.exists()));
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.run("receive-session --computer-name localhost --name dropper | to json -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values = ints(&serde_json::from_slice(&out.stdout).expect("json"));
    assert!(
        !values.is_empty() && values.len() < 20000,
        "{}",
        values.len()
    );
    assert_eq!(values.last(), Some(&20000));
    assert!(
        values.windows(2).all(|w| w[1] == w[0] + 1),
        "not contiguous"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("older outputs were dropped"), "{stderr}");
}

#[test]
fn a_disconnected_session_is_deleted_when_its_idle_timeout_expires() {
    let sb = Sandbox::new();
    // The process that disconnected it stays, to see what the host says afterwards.
    let marker = sb.path().join("expired");
    let mut knew = sb.spawn(&format!(
        "let s = new-session --name short --idle-timeout 1min
         disconnect-session $s | ignore
         print ready
         while not ('{m}' | path exists) {{ sleep 100ms }}
         {{ listed: (get-session --computer-name localhost | length), state: ($s | get-session | get 0.state) }} | to json -r",
        m = marker.display()
    ));
    // Kept open to the end: the process prints its answer there.
    let mut reader = BufReader::new(knew.stdout.take().expect("stdout"));
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut reader, &mut ready).expect("ready");
    assert_eq!(ready.trim(), "ready");
    let pids = sb.worker_pids();
    assert_eq!(pids.len(), 1);
    // Still there well before the minute is up.
    std::thread::sleep(Duration::from_secs(5));
    assert!(alive(pids[0]));
    assert!(
        eventually(Duration::from_secs(80), || !alive(pids[0])),
        "the session outlived its idle timeout"
    );
    let left = sb.json("get-session --computer-name localhost | length");
    assert_eq!(left, json!(0));
    assert_eq!(
        sb.end_records(),
        ["its idle timeout (1min) expired with no client attached"]
    );
    // The process that knew it: the host's answer wins, the session is Closed.
    std::fs::write(&marker, "x").expect("marker");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut reader, &mut stdout).expect("stdout");
    let out = knew.wait_with_output().expect("nu");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(seen, json!({"listed": 0, "state": "Closed"}));
}

#[test]
fn a_client_killed_mid_stream_loses_nothing_and_another_receives_the_rest() {
    let sb = Sandbox::new();
    let mut client = sb.spawn(
        "let s = new-session --name stream
         invoke-session $s { 1..3000 | each {|i| sleep 2ms; $i } } | each {|v| print $v } | ignore",
    );
    let stdout = client.stdout.take().expect("stdout");
    let mut seen: Vec<i64> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        seen.push(line.trim().parse().expect("an int"));
        if seen.len() >= 500 {
            break;
        }
    }
    client.kill().expect("kill nu");
    client.wait().expect("wait");
    let rest = ints(&sb.json("receive-session --computer-name localhost --name stream"));
    let last_seen = *seen.last().expect("values");
    let first_rest = *rest.first().expect("the rest");
    assert!(
        first_rest <= last_seen + 1,
        "lost {}..{} when the client was killed",
        last_seen + 1,
        first_rest - 1
    );
    assert_eq!(
        rest,
        (first_rest..=3000).collect::<Vec<_>>(),
        "the rest is not whole and in order"
    );
    // At least once at the seam: what was on its way to the killed nu may come again.
    eprintln!(
        "killed after {last_seen}; the rest starts at {first_rest} ({} again)",
        last_seen + 1 - first_rest
    );
}
