//! Streams at bulk: an external command's output as a byte stream (streamed as it is written,
//! shaped as it is locally, failing as it fails locally), values larger than a frame both ways,
//! and the clear error past the message limit. Over a real sshd, as a remote user with nothing
//! preset.

use nu_session_tests::Sandbox;
use serde_json::json;

#[test]
fn an_external_streams_its_output_as_a_byte_stream_as_it_would_locally() {
    let out = over_ssh(
        "127.0.0.70",
        r#"let s = new-session @computer
             let t = date now
             let lines = invoke-session $s '^sh -c "echo first; sleep 2; echo second"' | lines | each {|l| {line: $l, ms: (((date now) - $t) / 1ms | math round)} }
             {
               lines: $lines
               remote: (invoke-session $s '^echo hi' | describe)
               local: (^echo hi | describe)
               collected: (invoke-session $s '^echo hi')
               lines_of_three: (invoke-session $s '^printf "a\nb\nc\n"' | lines)
               file: (invoke-session $s 'open --raw /etc/hostname' | describe)
               string: (invoke-session $s '"text"' | describe)
               failed: (try { invoke-session $s '^sh -c "echo out; exit 3"'; 'no error' } catch {|e| $e.msg })
               late: (try { invoke-session $s '^sh -c "echo a; sleep 1; exit 4"' | collect; 'no error' } catch {|e| 'an error' })
               by_session: (invoke-session $s --by-session '^echo hi' | get 0.output)
               state: (get-session | get 0.state)
             }"#,
    );
    let lines = out["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["line"], "first");
    assert_eq!(lines[1]["line"], "second");
    let (first, second) = (
        lines[0]["ms"].as_f64().unwrap(),
        lines[1]["ms"].as_f64().unwrap(),
    );
    // The first line arrived while the command still ran (it sleeps 2 s before the second).
    assert!(
        second - first >= 1500.0,
        "the first line came with the second: {lines:?}"
    );
    assert_eq!(out["remote"], out["local"], "{out}");
    assert_eq!(out["remote"], "byte stream");
    assert_eq!(out["file"], "byte stream");
    assert_eq!(out["string"], "string");
    // Collected, an external's output loses its final newline as it does locally.
    assert_eq!(out["collected"], "hi");
    assert_eq!(out["lines_of_three"], json!(["a", "b", "c"]));
    assert_eq!(out["failed"], "External command had a non-zero exit code");
    assert_eq!(out["late"], "an error", "a late failure is still a failure");
    assert_eq!(out["by_session"], "hi");
    assert_eq!(out["state"], "Opened");
}

#[test]
fn a_hundred_megabytes_of_external_output_cross_in_bounded_worker_memory() {
    // The session's code runs in its worker: /proc/self is the worker.
    let out = over_ssh(
        "127.0.0.71",
        r#"let s = new-session @computer
             let peak = {|| invoke-session $s { open /proc/self/status | lines | where $it starts-with VmHWM | first | split words | get 1 | into int } }
             let before = do $peak
             let got = invoke-session $s '^head -c 100000000 /dev/urandom' | into binary | bytes length
             let after = do $peak
             let sum = invoke-session $s '^sh -c "head -c 1000000 /dev/zero; echo; seq 1 100000"' | lines | skip 1 | into int | math sum
             {got: $got, grew_kib: ($after - $before), sum: $sum}"#,
    );
    assert_eq!(out["got"], 100_000_000, "{out}");
    assert_eq!(out["sum"], 5_000_050_000i64, "{out}");
    let grew = out["grew_kib"].as_i64().unwrap();
    assert!(
        grew < 64 * 1024,
        "the worker's peak memory grew by {grew} KiB for 100 MB of output"
    );
}

#[test]
fn an_eighty_mebibyte_binary_crosses_both_ways() {
    let out = over_ssh(
        "127.0.0.72",
        r#"let s = new-session @computer
             let b = random binary 80MiB
             let up = $b | invoke-session $s { {len: ($in | bytes length), hash: ($in | hash sha256)} }
             invoke-session $s { let kept = random binary 80MiB; $kept | save -f ~/kept.bin }
             let down = invoke-session $s { open --raw ~/kept.bin | collect }
             let remote_hash = invoke-session $s { open --raw ~/kept.bin | hash sha256 }
             invoke-session $s { rm ~/kept.bin }
             {
               up_len: $up.len, up_same: ($up.hash == ($b | hash sha256)),
               down_len: ($down | bytes length), down_same: (($down | hash sha256) == $remote_hash),
               down_type: ($down | describe),
               state: (get-session | get 0.state)
             }"#,
    );
    assert_eq!(
        out,
        json!({
            "up_len": 83_886_080, "up_same": true,
            "down_len": 83_886_080, "down_same": true,
            "down_type": "binary",
            "state": "Opened"
        })
    );
}

#[test]
fn a_value_over_the_message_limit_is_a_clear_error_and_the_session_goes_on() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.73");
    // The host's limit is set for this user: 20 MiB.
    let _settings = UserSettings::write(&server.user, r#"{"max_message_bytes": 20971520}"#);
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let down = sb.ssh_caught(
        &config,
        &format!(
            "let s = new-session {computer}; invoke-session $s {{ random binary 30MiB | collect }}"
        ),
        "$e.rendered",
    );
    assert!(
        down.contains("exceeds the limit of 20.0 MiB"),
        "the error says why: {down}"
    );
    // This side's limit (NU_SESSION_MAX_MESSAGE_BYTES, in the plugin's environment) for
    // pipeline input; the session stays.
    let out = sb
        .ssh_command(
            &config,
            &format!(
                "let s = new-session {computer}
                 let up = try {{ random binary 30MiB | collect | invoke-session $s {{ $in | bytes length }}; 'no error' }} catch {{|e| $e.msg }}
                 {{up: $up, after: (invoke-session $s {{ 6 * 7 }}), state: (get-session | get 0.state)}} | to json -r"
            ),
        )
        .env("NU_SESSION_MAX_MESSAGE_BYTES", (20 * 1024 * 1024).to_string())
        .output()
        .expect("nu runs");
    let out: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out["up"]
            .as_str()
            .is_some_and(|m| m.contains("exceeds the limit of 20.0 MiB")),
        "{out}"
    );
    assert_eq!(out["after"], 42);
    assert_eq!(out["state"], "Opened");
}

#[test]
fn external_output_from_several_hosts_is_one_value_per_session() {
    let sb = Sandbox::new();
    let servers = [sb.sshd("127.0.0.75"), sb.sshd("127.0.0.76")];
    let config = sb.ssh_config(&[&servers[0], &servers[1]], "");
    let [a, b] = [servers[0].computer(), servers[1].computer()];
    // Each host writes 200,000 lines (about 1.3 MB) of its own.
    let out = sb.ssh_json(
        &config,
        &format!(
            r#"let s = new-session {a} {b}
             let code = '^sh -c "seq 1 200000 | sed s/^/$(whoami):/"'
             let streamed = invoke-session $s $code | each {{|v| {{type: ($v | describe), lines: ($v | lines | length), first: ($v | lines | first)}} }}
             let rows = invoke-session $s --by-session $code | each {{|r| {{computer: $r.computer_name, lines: ($r.output | lines | length), last: ($r.output | lines | last), error: $r.error}} }}
             {{streamed: $streamed, rows: $rows}}"#
        ),
    );
    let (ua, ub) = (&servers[0].user.name, &servers[1].user.name);
    assert_eq!(
        out["streamed"],
        json!([
            {"type": "string", "lines": 200000, "first": format!("{ua}:1")},
            {"type": "string", "lines": 200000, "first": format!("{ub}:1")},
        ])
    );
    assert_eq!(
        out["rows"],
        json!([
            {"computer": a, "lines": 200000, "last": format!("{ua}:200000"), "error": null},
            {"computer": b, "lines": 200000, "last": format!("{ub}:200000"), "error": null},
        ])
    );
}

/// Runs `script` against a loopback sshd of its own, as a remote user with nothing preset;
/// `@computer` in it is that host.
fn over_ssh(address: &str, script: &str) -> serde_json::Value {
    let sb = Sandbox::new();
    let server = sb.sshd(address);
    let config = sb.ssh_config(&[&server], "");
    sb.ssh_json(&config, &script.replace("@computer", &server.computer()))
}

/// A remote user's host settings (`~/.config/nu-session/host.json`), removed when dropped (the
/// user goes back to the pool).
struct UserSettings(std::path::PathBuf);

impl UserSettings {
    fn write(user: &nu_session_tests::RemoteUser, json: &str) -> UserSettings {
        let dir = user.home.join(".config/nu-session");
        for path in [user.home.join(".config"), dir.clone()] {
            std::fs::create_dir_all(&path).expect("settings dir");
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).expect("chown");
        }
        let file = dir.join("host.json");
        std::fs::write(&file, json).expect("host.json");
        std::os::unix::fs::chown(&file, Some(user.uid), Some(user.gid)).expect("chown");
        UserSettings(file)
    }
}

impl Drop for UserSettings {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
