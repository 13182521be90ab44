//! A hostile or broken host, played by the test ([`HostileHost`]) on the sockets where this
//! machine's host would be: bogus sequence numbers, inverted spans, escape sequences, a flood
//! for invocations nobody started, a missing `Finished`, a truncated frame, durations too
//! large for a date. The plugin never panics, its memory stays bounded, and the user gets a
//! value or an error.

use std::process::Output;
use std::time::{Duration, Instant};

use nu_session_tests::hostile::{ESCAPES, GONE};
use nu_session_tests::{HostileHost, Sandbox};

/// Runs `script`; it must end within `limit` (a hang is a failure, not a stuck test run).
fn run_within(sb: &Sandbox, script: &str, limit: Duration) -> Output {
    let mut child = sb
        .command(script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nu");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{script}: still running after {limit:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn json(sb: &Sandbox, script: &str) -> serde_json::Value {
    let out = run_within(
        sb,
        &format!("{script} | to json -r"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n--- stderr\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e})"))
}

#[test]
fn bogus_sequence_numbers_are_delivered_once_and_break_nothing() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    // 0, repeats, a step back, and up to u64::MAX: each value once, in order.
    let out = json(
        &sb,
        "let s = new-session --name seqs; invoke-session $s { 1..2 }",
    );
    assert_eq!(out, serde_json::json!([1, 2]));
}

#[test]
fn errors_with_broken_spans_and_escape_sequences_reach_the_user_inert() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    let out = json(
        &sb,
        "let s = new-session --name spans
         let spans = try { invoke-session $s { 1 } } catch {|e| $e.msg }
         let t = new-session --name escapes
         let escapes = try { invoke-session $t { 1 } } catch {|e| {msg: $e.msg, rendered: $e.rendered} }
         {spans: $spans, after: (invoke-session $s { 1 }), escapes: $escapes}",
    );
    assert_eq!(out["spans"], "bad spans");
    // The plugin is still there: the next invocation is answered.
    assert_eq!(out["after"], 42);
    let msg = out["escapes"]["msg"].as_str().unwrap();
    assert!(msg.starts_with("evil") && msg.ends_with("end"), "{msg:?}");
    let rendered = out["escapes"]["rendered"].as_str().unwrap();
    for text in [msg, rendered] {
        assert!(
            !text.contains("\u{1b}]0;") && !text.contains("\u{1b}[2J"),
            "{text:?}"
        );
        assert!(!text.contains("\u{7}"), "{text:?}");
    }
    assert!(msg.contains("\\u{1b}"), "written out: {msg:?}");
    assert_ne!(msg, ESCAPES);
}

/// The plugin's peak memory, in MiB, and the result of `script` before it (as JSON).
const PEAK: &str = "let pid = plugin list | where name == session | get 0.pid
         let hwm = open --raw $'/proc/($pid)/status' | lines | where $it starts-with VmHWM | first | parse -r '(?<kb>\\d+)' | get 0.kb | into int";

#[test]
fn a_flood_for_invocations_nobody_started_is_not_kept() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    // 400 MiB for call 999999, then our answer.
    let script = format!(
        "let s = new-session --name flood
         let r = invoke-session $s {{ 42 }}
         {PEAK}
         {{r: $r, hwm_mib: ($hwm // 1024), received: (receive-session $s | length)}}
         | to json -r"
    );
    let out = run_within(&sb, &script, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(out["r"], serde_json::json!([42]));
    let hwm = out["hwm_mib"].as_u64().unwrap();
    assert!(
        hwm < 100,
        "the plugin grew to {hwm} MiB for 400 MiB nobody asked for"
    );
    // Output of an invocation this client neither started nor was told of is not kept.
    assert_eq!(out["received"], 0);
}

#[test]
fn a_host_that_ignores_the_window_is_cut_off_and_the_plugin_stays_small() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    // 400 MiB for our own invocation, whatever the client's window says.
    let script = format!(
        "let s = new-session --name overflow
         let r = try {{ invoke-session $s {{ 42 }}; 'no error' }} catch {{|e| $e.msg }}
         {PEAK}
         {{r: $r, hwm_mib: ($hwm // 1024), state: (get-session | get 0.state)}}
         | to json -r"
    );
    let out = run_within(&sb, &script, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let r = out["r"].as_str().unwrap();
    assert!(r.contains("more output"), "{r}");
    let hwm = out["hwm_mib"].as_u64().unwrap();
    let window = WINDOW_MIB;
    assert!(
        hwm < window + 100,
        "the plugin grew to {hwm} MiB past a window of {window} MiB"
    );
    // The session is left as it is on its host (this host is not trusted again by itself).
    assert_eq!(out["state"], "Disconnected");
}

/// The client's window per invocation, in MiB (`nu_session_client::WINDOW`).
const WINDOW_MIB: u64 = 8;

#[test]
fn a_missing_finished_or_a_truncated_frame_is_an_error_not_a_hang() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    for name in ["vanish", "truncated"] {
        let out = json(
            &sb,
            &format!(
                "let s = new-session --name {name}
                 try {{ invoke-session $s {{ 1..10 }} | to json -r }} catch {{|e| $e.msg }}"
            ),
        );
        let text = out.as_str().unwrap_or_default();
        assert!(text.contains(GONE), "{name}: {out}");
    }
}

#[test]
fn durations_too_large_for_a_date_are_listed_without_overflow() {
    let sb = Sandbox::new();
    let host = HostileHost::start(&sb.layout());
    let out = json(&sb, "new-session --name plain | ignore; get-session");
    assert_eq!(host.sessions(), 1);
    let row = &out[0];
    assert_eq!(
        (&row["name"], &row["state"]),
        (&"plain".into(), &"Opened".into()),
        "{out}"
    );
    // The longest duration nu has, and no expiry date (none exists that late).
    assert_eq!(row["idle_timeout"], i64::MAX, "{out}");
    assert!(row["expires_on"].is_null(), "{out}");
}

#[test]
fn ctrl_c_gives_the_prompt_back_when_the_session_does_not_stop() {
    let sb = Sandbox::new();
    let _host = HostileHost::start(&sb.layout());
    let term = sb.terminal(None, None);
    term.wait_for(">", Duration::from_secs(20));
    term.type_line("let s = new-session --name deaf");
    term.type_line("invoke-session $s { loop {} }");
    std::thread::sleep(Duration::from_secs(1));
    term.press("C-c");
    let screen = term.wait_for("did not stop", Duration::from_secs(20));
    assert!(screen.contains("goes on running there"), "{screen}");
    // The prompt is back, and the session answers the next invocation.
    term.type_line("invoke-session $s { 6 * 7 } | $in + 100");
    term.wait_for("142", Duration::from_secs(20));
}
