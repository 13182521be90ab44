//! Sessions over SSH, end to end: a real nu with the built plugin, a real OpenSSH sshd on
//! loopback running the built nu-session-host.

use std::time::Duration;

use nu_session_tests::Sandbox;
use serde_json::json;

#[test]
fn a_session_over_ssh_keeps_state_and_runs_as_the_remote_user() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.2");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let out = sb.ssh_json(
        &config,
        &format!(
            "let s = new-session {computer}
             invoke-session $s {{ let x = 20; cd / }}
             {{
               record: ($s | first | select computer_name transport state user port)
               whoami: (invoke-session $s {{ ^whoami }})
               state: (invoke-session $s '{{x: ($x + 1), pwd: $env.PWD}}')
             }}"
        ),
    );
    assert_eq!(
        out,
        json!({
            "record": {"computer_name": computer, "transport": "SSH", "state": "Opened", "user": server.user.name, "port": server.port},
            "whoami": server.user.name,
            "state": {"x": 21, "pwd": "/"}
        })
    );
}

/// The error a script raises, as rendered for the user (message, labels and help).
fn caught(sb: &Sandbox, config: &std::path::Path, code: &str) -> String {
    sb.ssh_caught(
        config,
        code,
        "$e.msg + (char nl) + ($e.rendered | ansi strip)",
    )
}

#[test]
fn an_unknown_host_key_is_refused_and_accept_new_records_it() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.3");
    let config = sb.ssh_config(&[], "");
    let computer = server.computer();
    let error = caught(&sb, &config, &format!("new-session {computer}"));
    assert!(error.contains("the host key of"), "{error}");
    assert!(error.contains("is unknown"), "{error}");
    assert!(error.contains("accept-new"), "{error}");
    assert!(server.worker_pids().is_empty());

    let out = sb.ssh_json(
        &config,
        &format!("new-session {computer} --strict-host-key-checking accept-new | get 0.state"),
    );
    assert_eq!(out, json!("Opened"));
    let known = std::fs::read_to_string(sb.path().join("known_hosts")).unwrap();
    assert!(
        known.contains(&format!("[127.0.0.3]:{}", server.port)),
        "{known}"
    );
    // Now known: the default policy accepts it.
    let out = sb.ssh_json(&config, &format!("new-session {computer} | get 0.state"));
    assert_eq!(out, json!("Opened"));
}

#[test]
fn a_changed_host_key_is_refused_naming_the_known_hosts_line() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.4");
    let config = sb.ssh_config(&[], "");
    // known_hosts has another key for this host, on line 2.
    let other = sb.sshd("127.0.0.5");
    let forged = format!("[127.0.0.4]:{} {}", server.port, other.host_key);
    std::fs::write(
        sb.path().join("known_hosts"),
        format!("# comment\n{forged}\n"),
    )
    .unwrap();
    let error = caught(&sb, &config, &format!("new-session {}", server.computer()));
    assert!(error.contains("has CHANGED"), "{error}");
    assert!(error.contains("known_hosts:"), "{error}");
    assert!(server.worker_pids().is_empty());
}

#[test]
fn a_missing_identity_file_is_named() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.6");
    let config = sb.ssh_config(&[&server], "");
    let missing = sb.path().join("no_such_key");
    let error = caught(
        &sb,
        &config,
        &format!(
            "new-session {} --identity-file {}",
            server.computer(),
            missing.display()
        ),
    );
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

#[test]
fn bad_ports_and_injection_attempts_are_rejected_before_connecting() {
    let sb = Sandbox::new();
    let config = sb.ssh_config(&[], "");
    let marker = sb.path().join("pwned");
    let cases = [
        ("new-session web1:99999".to_string(), "invalid port"),
        ("new-session web1 --port 0".to_string(), "is not a port"),
        (
            format!("new-session '-oProxyCommand=touch {}'", marker.display()),
            "starts with `-`",
        ),
        (
            format!("new-session 'web1;touch {}'", marker.display()),
            "contains",
        ),
        (
            format!("new-session 'x$(touch {})@web1'", marker.display()),
            "invalid user name",
        ),
        (
            format!(
                "new-session web1 --user '-oProxyCommand=touch {}'",
                marker.display()
            ),
            "invalid user name",
        ),
    ];
    for (code, expected) in cases {
        let error = caught(&sb, &config, &code);
        assert!(error.contains(expected), "{code}: {error}");
    }
    assert!(!marker.exists(), "an injected command ran");
}

#[test]
fn fan_out_opens_every_host_and_a_dead_one_is_an_error_row() {
    let sb = Sandbox::new();
    let servers = [
        sb.sshd("127.0.0.7"),
        sb.sshd("127.0.0.8"),
        sb.sshd("127.0.0.9"),
    ];
    let config = sb.ssh_config(&servers.iter().collect::<Vec<_>>(), "");
    let dead = {
        let listener = std::net::TcpListener::bind(("127.0.0.10", 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let names: Vec<String> = servers.iter().map(|s| s.computer()).collect();
    let out = sb.ssh_json(
        &config,
        &format!(
            "let opened = new-session {} root@127.0.0.10:{dead} {} {} --name web --connect-timeout 5sec
             {{
               rows: ($opened | length)
               ok: ($opened | each {{|r| try {{ $r.computer_name }} catch {{ 'error' }} }})
               names: (get-session | get name | uniq)
               hosts: (invoke-session (get-session) {{ $env.SSH_CONNECTION | split row ' ' | get 2 }})
             }}",
            names[0], names[1], names[2]
        ),
    );
    assert_eq!(out["rows"], 4);
    assert_eq!(out["ok"], json!([names[0], "error", names[1], names[2]]));
    assert_eq!(out["names"], json!(["web"]));
    assert_eq!(out["hosts"], json!(["127.0.0.7", "127.0.0.8", "127.0.0.9"]));
}

#[test]
fn ssh_config_aliases_supply_host_user_and_port() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.11");
    let config = sb.ssh_config(
        &[&server],
        &format!(
            "Host webalias\n  HostName 127.0.0.11\n  User {}\n  Port {}\n",
            server.user.name, server.port
        ),
    );
    let out = sb.ssh_json(
        &config,
        "new-session webalias | first | select computer_name user port transport",
    );
    assert_eq!(
        out,
        json!({"computer_name": "webalias", "user": server.user.name, "port": server.port, "transport": "SSH"})
    );
}

#[test]
fn piped_records_bind_host_user_port_and_name_per_row() {
    let sb = Sandbox::new();
    let a = sb.sshd("127.0.0.12");
    let b = sb.sshd("127.0.0.13");
    let config = sb.ssh_config(&[&a, &b], "");
    let out = sb.ssh_json(
        &config,
        &format!(
            "[[computer_name user port name]; [127.0.0.12 {} {} db] [127.0.0.13 {} {} web]]
             | new-session | select computer_name user port name",
            a.user.name, a.port, b.user.name, b.port
        ),
    );
    assert_eq!(
        out,
        json!([
            {"computer_name": "127.0.0.12", "user": a.user.name, "port": a.port, "name": "db"},
            {"computer_name": "127.0.0.13", "user": b.user.name, "port": b.port, "name": "web"}
        ])
    );
}

/// Counts the channels the server opened of `kind` (`LogLevel DEBUG1` logs each) since its
/// log was `from` bytes long.
fn channels(server: &nu_session_tests::Sshd, from: usize, kind: &str) -> usize {
    server.log()[from..]
        .lines()
        .filter(|l| l.contains("server_input_channel_open: ctype") && l.contains(kind))
        .count()
}

/// Makes sure the server's user has the host program (copied by a first session, removed again),
/// and the manager it started has exited; returns how long the server's log is then.
fn with_host_program(
    sb: &Sandbox,
    config: &std::path::Path,
    server: &nu_session_tests::Sshd,
) -> usize {
    sb.ssh_json(
        config,
        &format!("new-session {} | remove-session", server.computer()),
    );
    server.user.reset();
    server.log().len()
}

#[test]
fn once_the_host_is_known_sessions_open_its_sockets_without_running_a_remote_command() {
    let sb = Sandbox::new();
    let server = sb.sshd_with("127.0.0.8", "LogLevel DEBUG1");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let from = with_host_program(&sb, &config, &server);
    let out = sb.ssh_json(
        &config,
        &format!(
            "let a = new-session {computer}
             let b = new-session {computer}
             let c = new-session {computer}
             [$a $b $c] | flatten | each {{|s| invoke-session $s {{ 6 * 7 }} }}"
        ),
    );
    assert_eq!(out, json!([42, 42, 42]));
    // The first manager connection runs `nu-session-host connect` (it starts the manager and
    // learns where the sockets are); everything after opens them directly.
    assert_eq!(channels(&server, from, "session"), 1, "{}", server.log());
    assert_eq!(
        channels(&server, from, "direct-streamlocal"),
        5,
        "{}",
        server.log()
    );
}

#[test]
fn a_server_that_forbids_socket_forwarding_still_gets_sessions() {
    let sb = Sandbox::new();
    let server = sb.sshd_with(
        "127.0.0.9",
        "LogLevel DEBUG1\nAllowStreamLocalForwarding no",
    );
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let from = with_host_program(&sb, &config, &server);
    let out = sb.ssh_json(
        &config,
        &format!(
            "let a = new-session {computer}
             let b = new-session {computer}
             [$a $b] | flatten | each {{|s| invoke-session $s {{ 6 * 7 }} }}"
        ),
    );
    assert_eq!(out, json!([42, 42]));
    // Refused once, then not asked again: every connection runs the relay.
    assert_eq!(
        channels(&server, from, "direct-streamlocal"),
        1,
        "{}",
        server.log()
    );
    assert_eq!(channels(&server, from, "session"), 4, "{}", server.log());
}

#[test]
fn proxy_jump_reaches_a_host_through_another() {
    let sb = Sandbox::new();
    let jump = sb.sshd_with("127.0.0.10", "LogLevel DEBUG1");
    let inner = sb.sshd("127.0.0.11");
    let config = sb.ssh_config(
        &[&jump, &inner],
        &format!(
            "Host inner\n  HostName 127.0.0.11\n  Port {}\n  User {}\n  ProxyJump {}\n",
            inner.port,
            inner.user.name,
            jump.computer()
        ),
    );
    let out = sb.ssh_json(
        &config,
        "let s = new-session inner
         invoke-session $s { let x = 5 }
         { record: ($s | first | select computer_name transport state port), x: (invoke-session $s '$x'), addr: (invoke-session $s { $env.SSH_CONNECTION | split row ' ' | get 2 }) }",
    );
    assert_eq!(
        out,
        json!({
            "record": {"computer_name": "inner", "transport": "SSH", "state": "Opened", "port": inner.port},
            "x": 5,
            "addr": "127.0.0.11"
        })
    );
    // The connection to the inner host went through the jump host.
    let log = jump.log();
    assert!(
        log.lines()
            .any(|l| l.contains("server_request_direct_tcpip")
                && l.contains(&format!("target 127.0.0.11 port {}", inner.port))),
        "{log}"
    );
}

#[test]
fn a_jump_host_is_verified_with_its_own_settings_not_the_targets() {
    let sb = Sandbox::new();
    let jump = sb.sshd("127.0.0.18");
    let inner = sb.sshd("127.0.0.19");
    // Only the inner host's key is known; the inner host is configured not to check keys. As
    // with OpenSSH, that says nothing about the jump host: its unknown key is refused (a man in
    // the middle there would see every password typed for the inner host).
    let config = sb.ssh_config(
        &[&inner],
        &format!(
            "Host inner\n  HostName 127.0.0.19\n  Port {}\n  User {}\n  ProxyJump {}\n  StrictHostKeyChecking no\n",
            inner.port,
            inner.user.name,
            jump.computer()
        ),
    );
    let out = sb.ssh_run(&config, "new-session inner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "connected through an unknown jump host"
    );
    assert!(stderr.contains("127.0.0.18"), "{stderr}");
    assert!(stderr.to_lowercase().contains("host key"), "{stderr}");
    assert!(inner.worker_pids().is_empty());
    // With the jump host's key known, the same line works (the inner host still unchecked).
    let config = sb.ssh_config(
        &[&jump],
        &format!(
            "Host inner\n  HostName 127.0.0.19\n  Port {}\n  User {}\n  ProxyJump {}\n  StrictHostKeyChecking no\n",
            inner.port,
            inner.user.name,
            jump.computer()
        ),
    );
    let state = sb.ssh_json(&config, "new-session inner | get 0.state");
    assert_eq!(state, json!("Opened"));
}

#[test]
fn a_dead_jump_host_is_named_in_the_error() {
    let sb = Sandbox::new();
    let inner = sb.sshd("127.0.0.12");
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.13:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = sb.ssh_config(
        &[&inner],
        &format!(
            "Host inner\n  HostName 127.0.0.12\n  Port {}\n  User {}\n  ProxyJump jumper@127.0.0.13:{dead}\n",
            inner.port, inner.user.name
        ),
    );
    let error = caught(&sb, &config, "new-session inner");
    assert!(
        error.contains(&format!("cannot connect to jumper@127.0.0.13:{dead}")),
        "{error}"
    );
}

#[test]
fn a_slow_fan_out_shows_progress_on_a_terminal_and_not_in_a_pipe() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.14");
    // Accepts connections and never speaks SSH: a host that hangs until --connect-timeout.
    let silent = std::net::TcpListener::bind("127.0.0.15:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let config = sb.ssh_config(&[&server], "");
    let script = format!(
        "new-session {} nobody@127.0.0.15:{silent_port} --connect-timeout 2sec | each {{|r| try {{ $r.state }} catch {{ 'failed' }} }} | to json -r",
        server.computer()
    );
    let screen = sb.pty_run(&config, &script);
    assert!(screen.contains("new-session: 1/2 done"), "{screen}");
    assert!(screen.contains(r#"["Opened","failed"]"#), "{screen}");
    let piped = sb.ssh_run(&config, &script);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("done"), "{stderr}");
    drop(silent);
}

/// An ed25519 key encrypted with `passphrase`, authorized on the sandbox's servers.
fn encrypted_key(sb: &Sandbox, passphrase: &str) -> std::path::PathBuf {
    let key = sb.path().join("id_encrypted");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
    sb.authorize(&key.with_extension("pub"));
    key
}

#[test]
fn an_encrypted_key_is_asked_for_on_the_terminal_and_refused_without_one() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.16");
    let key = encrypted_key(&sb, "correct horse");
    let config = sb.ssh_config(&[&server], "");
    let script = format!(
        "let s = new-session {} --identity-file {}; print ($s | get 0.state); print (invoke-session $s {{ ^whoami }})",
        server.computer(),
        key.display()
    );

    let terminal = sb.terminal(Some(&config), Some(&script));
    let prompt = format!("Enter passphrase for key '{}':", key.display());
    terminal.wait_for(&prompt, Duration::from_secs(20));
    terminal.type_line("wrong");
    terminal.wait_for_n(&prompt, 2, Duration::from_secs(20));
    terminal.type_line("correct horse");
    let screen = terminal.wait_for("[exited 0]", Duration::from_secs(30));
    assert!(
        screen.contains(&format!("Opened\n{}\n", server.user.name)),
        "{screen}"
    );
    // What was typed never shows.
    assert!(!screen.contains("correct horse"), "{screen}");
    assert!(!screen.contains("wrong"), "{screen}");

    // Without a terminal: a clear error, and nothing waits for input.
    let error = caught(
        &sb,
        &config,
        &format!(
            "new-session {} --identity-file {}",
            server.computer(),
            key.display()
        ),
    );
    assert!(error.contains("is encrypted"), "{error}");
    assert!(
        error.contains("no terminal to ask for its passphrase"),
        "{error}"
    );
}

#[test]
fn over_ssh_another_process_finds_the_session_connects_and_receives_its_output() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.17");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let left = sb.ssh_json(
        &config,
        &format!(
            "let s = new-session {computer} --name ITTask
             invoke-session $s {{ let n = 41 }}
             invoke-session $s {{ 1..40 | each {{|i| sleep 10ms; $i }} }} --disconnected | get 0.state"
        ),
    );
    assert_eq!(left, json!("Disconnected"));
    let out = sb.ssh_json(
        &config,
        &format!(
            "let found = get-session --computer-name {computer} | where name == ITTask | first
             {{
               found: ($found | select computer_name transport state availability)
               received: (receive-session --computer-name {computer} --name ITTask)
               state: (invoke-session (get-session --name ITTask) '$n + 1')
               again: (receive-session --name ITTask | length)
             }}"
        ),
    );
    assert_eq!(
        out,
        json!({
            "found": {"computer_name": computer, "transport": "SSH", "state": "Disconnected", "availability": "None"},
            "received": (1..=40).collect::<Vec<i64>>(),
            "state": 42,
            "again": 0
        })
    );
}

#[test]
fn host_keys_are_read_as_openssh_reads_them_hashed_rotated_revoked_aliased_global() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.74");
    let computer = server.computer();
    let line = server.known_hosts_line();
    let (name, key) = line.trim().split_once(' ').expect("a known_hosts line");
    let known = sb.path().join("known_hosts");
    let global = sb.path().join("global_known_hosts");
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMBsk2H1/n51Tn+LN2n83pZgj/WEQcRNDVnAyF8bFBRq";
    let open = |config: &std::path::Path, known_hosts: &str| {
        std::fs::write(&known, known_hosts).expect("known_hosts");
        sb.ssh_run(config, &format!("new-session {computer} | get 0.state"))
    };
    let opened = |out: std::process::Output| {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Opened"),
            "did not open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let config = sb.ssh_config(&[&server], "");
    // Hashed, as `HashKnownHosts yes` (Debian's default) writes it.
    std::fs::write(&known, format!("{line}\n")).expect("known_hosts");
    let hashed = std::process::Command::new("ssh-keygen")
        .args(["-H", "-f"])
        .arg(&known)
        .output()
        .expect("ssh-keygen -H");
    assert!(hashed.status.success());
    let hashed = std::fs::read_to_string(&known).expect("hashed");
    assert!(hashed.starts_with("|1|"), "{hashed}");
    opened(open(&config, &hashed));
    // A key rotated in: the old one first.
    opened(open(&config, &format!("{name} {other}\n{line}\n")));
    // Revoked, though also known: refused, saying so.
    let out = open(&config, &format!("{line}\n@revoked * {key}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a revoked key was accepted");
    assert!(stderr.contains("REVOKED"), "{stderr}");
    // Only in the global file, under the host's alias.
    std::fs::write(&global, format!("fleet-web {key}\n")).expect("global");
    let aliased = sb.ssh_config(
        &[&server],
        &format!(
            "Host {}\n  HostKeyAlias fleet-web\n  GlobalKnownHostsFile {}\n",
            server.address,
            global.display()
        ),
    );
    opened(open(&aliased, ""));
}

/// OpenSSH's own `ssh` running `true` on `server` with `config` (and `agent`), for comparing.
fn openssh(
    config: &std::path::Path,
    server: &nu_session_tests::Sshd,
    agent: Option<&std::path::Path>,
) -> std::process::Output {
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F")
        .arg(config)
        .args(["-o", "BatchMode=yes", "-p", &server.port.to_string()])
        .arg(format!("{}@{}", server.user.name, server.address))
        .arg("true")
        .env_remove("SSH_AUTH_SOCK");
    if let Some(agent) = agent {
        ssh.env("SSH_AUTH_SOCK", agent);
    }
    ssh.output().expect("ssh")
}

#[test]
fn host_certificates_signed_by_a_trusted_authority_are_accepted_and_bad_ones_refused() {
    let sb = Sandbox::new();
    let ca = sb.path().join("host_ca");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ca)
        .output()
        .expect("ssh-keygen");
    assert!(keygen.status.success());
    let ca_key = std::fs::read_to_string(ca.with_extension("pub")).expect("CA key");
    let ca_key = ca_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let good = sb.sshd_certified("127.0.0.77", &ca, &["-n", "127.0.0.77"]);
    let expired = sb.sshd_certified(
        "127.0.0.78",
        &ca,
        &["-n", "127.0.0.78", "-V", "20200101:20200102"],
    );
    let elsewhere = sb.sshd_certified("127.0.0.79", &ca, &["-n", "db.example.com"]);
    let config = sb.ssh_config(&[], "");
    let known = sb.path().join("known_hosts");
    let open = |server: &nu_session_tests::Sshd, known_hosts: &str| {
        std::fs::write(&known, known_hosts).expect("known_hosts");
        sb.ssh_run(
            &config,
            &format!("new-session {} | get 0.state", server.computer()),
        )
    };
    let opened = |out: std::process::Output| {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Opened"),
            "did not open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let refused = |out: std::process::Output, said: &[&str]| {
        // The message as one line (the renderer wraps it in a margin).
        let stderr = String::from_utf8_lossy(&out.stderr).replace("\n  | ", " ");
        let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!out.status.success(), "accepted: {stderr}");
        for words in said {
            assert!(stderr.contains(words), "no {words:?} in: {stderr}");
        }
    };
    let trusted = format!("@cert-authority * {ca_key}\n");
    // OpenSSH agrees that the setup is sound: its ssh accepts the certificate.
    std::fs::write(&known, &trusted).expect("known_hosts");
    let ssh = openssh(&config, &good, None);
    assert!(
        ssh.status.success(),
        "{}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    // No plain key is known: the certificate alone vouches for the host.
    opened(open(&good, &trusted));
    // An authority trusted for other hosts only, or another authority: not enough.
    let other_ca =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMBsk2H1/n51Tn+LN2n83pZgj/WEQcRNDVnAyF8bFBRq";
    refused(
        open(&good, &format!("@cert-authority *.example.com {ca_key}\n")),
        &["unknown"],
    );
    refused(
        open(&good, &format!("@cert-authority * {other_ca}\n")),
        &["host certificate", "not accepted", "trusts its signer"],
    );
    // A revoked authority is refused outright, even with the host's plain key known.
    refused(
        open(
            &good,
            &format!(
                "{trusted}@revoked * {ca_key}\n{}\n",
                good.known_hosts_line()
            ),
        ),
        &["certificate authority", "REVOKED"],
    );
    refused(open(&expired, &trusted), &["not accepted", "expired"]);
    refused(
        open(&elsewhere, &trusted),
        &["not accepted", "it is for db.example.com, not 127.0.0.79"],
    );
    // As OpenSSH: a certificate that is not accepted leaves its plain key, known here.
    opened(open(
        &elsewhere,
        &format!("{trusted}{}\n", elsewhere.known_hosts_line()),
    ));
}

#[test]
fn identities_only_and_identity_agent_choose_the_keys_offered_as_openssh_does() {
    let sb = Sandbox::new();
    // Three refusals and the server hangs up: an agent with more keys than that locks out the
    // configured key when every agent key is offered first.
    let server = sb.sshd_with("127.0.0.80", "MaxAuthTries 3");
    let mine = sb.client_key();
    let strays: Vec<_> = (0..5).map(|i| sb.stray_key(&format!("stray{i}"))).collect();
    let strays: Vec<&std::path::Path> = strays.iter().map(|k| k.as_path()).collect();
    let crowded = sb.agent("crowded", &strays);
    let mut with_mine = strays.clone();
    with_mine.push(&mine);
    let holding = sb.agent("holding", &with_mine);
    let only_mine = sb.agent("mine", &[&mine]);
    let open = |host_config: &str, agent: &nu_session_tests::Agent| {
        let config = sb.ssh_config(
            &[&server],
            &format!("Host {}\n{host_config}", server.address),
        );
        let out = sb
            .ssh_command(
                &config,
                &format!("new-session {} | get 0.state", server.computer()),
            )
            .env("SSH_AUTH_SOCK", &agent.socket)
            .output()
            .expect("run nu");
        (out, config)
    };
    let opened = |(out, _): (std::process::Output, _), case: &str| {
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Opened"),
            "{case}: did not open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // IdentitiesOnly (the sandbox's config says yes for every host): the agent's keys are not
    // offered, the identity file is.
    opened(open("", &crowded), "IdentitiesOnly yes");
    // Without it, as OpenSSH: every stray key goes first and the server hangs up before the
    // identity file. The real ssh fails the same way.
    let (out, config) = open("  IdentitiesOnly no\n", &crowded);
    assert!(
        !out.status.success(),
        "opened with every stray key offered first"
    );
    let ssh = openssh(&config, &server, Some(&crowded.socket));
    assert!(!ssh.status.success(), "OpenSSH got in");
    assert!(
        String::from_utf8_lossy(&ssh.stderr).contains("Too many authentication failures"),
        "{}",
        String::from_utf8_lossy(&ssh.stderr)
    );
    // An agent holding the identity file's key offers that one first, however many it holds.
    opened(
        open("  IdentitiesOnly no\n", &holding),
        "agent holding the key",
    );
    // IdentityAgent none: the agent is not asked at all.
    opened(
        open("  IdentitiesOnly no\n  IdentityAgent none\n", &crowded),
        "IdentityAgent none",
    );
    // IdentityAgent names another agent than SSH_AUTH_SOCK's: the one holding the key.
    opened(
        open(
            &format!(
                "  IdentitiesOnly no\n  IdentityFile {}\n  IdentityAgent {}\n",
                sb.path().join("missing").display(),
                only_mine.socket.display()
            ),
            &crowded,
        ),
        "IdentityAgent path",
    );
}

#[test]
fn more_sessions_than_the_server_s_max_sessions_get_more_connections() {
    let sb = Sandbox::new();
    // sshd's default MaxSessions (10), with forwarding off: each session's channel is a
    // command (the relay), and a connection holds at most ten.
    let server = sb.sshd_with(
        "127.0.0.81",
        "LogLevel DEBUG1\nAllowStreamLocalForwarding no\nMaxSessions 10",
    );
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let out = sb.ssh_json(
        &config,
        &format!(
            "let s = 1..14 | each {{|i| null | new-session {computer} --name $'s($i)' }} | flatten
             let answers = $s | each {{|x| invoke-session $x {{ 6 * 7 }} }}
             {{states: ($s | get state | uniq), answers: ($answers | uniq), count: ($answers | length)}}"
        ),
    );
    assert_eq!(
        out,
        json!({"states": ["Opened"], "answers": [42], "count": 14}),
        "{}",
        server.log()
    );
    // Ten relays on the first connection, the rest on a second.
    let logins = server.log().matches("Accepted publickey").count();
    assert_eq!(logins, 2, "{}", server.log());
}

#[test]
fn user_certificates_are_offered_with_their_key_as_openssh_does() {
    let sb = Sandbox::new();
    let user_ca = sb.stray_key("user_ca");
    let server = sb.sshd_with(
        "127.0.0.82",
        &format!(
            "TrustedUserCAKeys {}",
            user_ca.with_extension("pub").display()
        ),
    );
    // Keys the server knows nothing of, but certificates of its CA (or of none it trusts).
    let sign = |key: &std::path::Path, principal: &str, out: Option<&std::path::Path>| {
        let signed = std::process::Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&user_ca)
            .args(["-I", "test", "-n", principal])
            .arg(key.with_extension("pub"))
            .output()
            .expect("ssh-keygen -s");
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let made = sb.path().join(format!(
            "{}-cert.pub",
            key.file_name().unwrap().to_string_lossy()
        ));
        if let Some(out) = out {
            std::fs::rename(&made, out).expect("move certificate");
        }
    };
    let beside = sb.stray_key("beside");
    let elsewhere = sb.stray_key("elsewhere");
    let wrong = sb.stray_key("wrong");
    sign(&beside, &server.user.name, None);
    let certificate = sb.path().join("certs-elsewhere.pub");
    sign(&elsewhere, &server.user.name, Some(&certificate));
    sign(&wrong, "somebody-else", None);
    let config = sb.ssh_config(
        &[&server],
        &format!(
            "Host {}\n  CertificateFile {}\n",
            server.address,
            certificate.display()
        ),
    );
    let open = |key: &std::path::Path| {
        sb.ssh_run(
            &config,
            &format!(
                "new-session {} --identity-file {} | get 0.state",
                server.computer(),
                key.display()
            ),
        )
    };
    for (key, how) in [(&beside, "<key>-cert.pub"), (&elsewhere, "CertificateFile")] {
        let out = open(key);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Opened"),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A certificate for another principal does not get in, and the error names the key tried.
    let out = open(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "opened with another user's certificate"
    );
    assert!(stderr.contains("refused every key"), "{stderr}");
}
