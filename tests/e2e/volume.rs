//! Volume: nothing lost at any size. A buffered output far larger than the host's buffer and the
//! client's window is received whole, in order, in `Block` mode, with no warning; a receive that
//! stops early leaves exactly the rest for the next. Locally and over a real sshd, as a remote
//! user with nothing preset.

use nu_session_tests::Sandbox;
use serde_json::json;

/// Three million values started disconnected, received by one `receive-session` while still
/// being produced: counted, summed, the first and the last, what stderr said, and what a second
/// receive finds.
const WHOLE: &str = "let s = new-session @computer
     invoke-session $s --disconnected { 1..3000000 | each {|i| $i } } | ignore
     let got = receive-session $s | reduce -f {n: 0, sum: 0, first: null, last: null} {|v, acc|
       {n: ($acc.n + 1), sum: ($acc.sum + $v), first: ($acc.first | default $v), last: $v}
     }
     {got: $got, again: (receive-session $s | length), mode: (get-session | get 0.output_buffering_mode)}";

fn check_whole(out: serde_json::Value, stderr: &str) {
    assert_eq!(
        out,
        json!({
            "got": {"n": 3_000_000, "sum": 4_500_001_500_000i64, "first": 1, "last": 3_000_000},
            "again": 0,
            "mode": "Block"
        })
    );
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn three_million_buffered_values_are_received_whole_locally() {
    let sb = Sandbox::new();
    let out = sb.run(&format!("{} | to json -r", WHOLE.replace("@computer", "")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    check_whole(serde_json::from_slice(&out.stdout).expect("JSON"), &stderr);
}

#[test]
fn three_million_buffered_values_are_received_whole_over_ssh() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.90");
    let config = sb.ssh_config(&[&server], "");
    let out = sb.ssh_run(
        &config,
        &format!(
            "{} | to json -r",
            WHOLE.replace("@computer", &server.computer())
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    check_whole(serde_json::from_slice(&out.stdout).expect("JSON"), &stderr);
}

/// `first 3` of a receive, then the rest: exactly the rest, from another process too.
const EARLY_STOP: &str = "let s = new-session @computer --name early
     invoke-session $s --disconnected { 1..50 | each {|i| $i } } | ignore
     sleep 300ms
     let first = receive-session $s | first 3
     let next = receive-session $s | first 2
     disconnect-session $s | ignore
     {first: $first, next: $next}";

fn rest_elsewhere(run: impl Fn(&str) -> serde_json::Value, computer: &str) {
    let out = run(&EARLY_STOP.replace("@computer", computer));
    assert_eq!(out, json!({"first": [1, 2, 3], "next": [4, 5]}));
    let name = if computer.is_empty() {
        "localhost"
    } else {
        computer
    };
    let rest = run(&format!(
        "receive-session --computer-name {name} --name early"
    ));
    assert_eq!(rest, json!((6..=50).collect::<Vec<_>>()));
}

#[test]
fn a_receive_that_stops_early_leaves_exactly_the_rest_locally() {
    let sb = Sandbox::new();
    rest_elsewhere(|script| sb.json(script), "");
}

#[test]
fn a_receive_that_stops_early_leaves_exactly_the_rest_over_ssh() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.91");
    let config = sb.ssh_config(&[&server], "");
    rest_elsewhere(|script| sb.ssh_json(&config, script), &server.computer());
}
