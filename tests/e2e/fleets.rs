//! Many hosts at once (COMMANDS.md: fan-outs, lists of computers, empty input): a host's failure
//! is a row or a named error and never the end of the others; results say where they came from;
//! what the hosts answer is the truth; completion offers sessions and computers.

use nu_session_tests::{Sandbox, Sshd};
use serde_json::json;

/// Three servers, trusted, with the ssh config naming them `web1`..`web3`.
fn three_hosts(sb: &Sandbox) -> (Vec<Sshd>, std::path::PathBuf) {
    let servers: Vec<Sshd> = ["127.0.0.60", "127.0.0.61", "127.0.0.62"]
        .into_iter()
        .map(|address| sb.sshd(address))
        .collect();
    let aliases: String = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "Host web{}\n  HostName {}\n  Port {}\n  User {}\n",
                i + 1,
                s.address,
                s.port,
                s.user.name
            )
        })
        .collect();
    let config = sb.ssh_config(&servers.iter().collect::<Vec<_>>(), &aliases);
    (servers, config)
}

/// Code that fails on web2 (127.0.0.61) and gives its host's address elsewhere.
const FAILS_ON_WEB2: &str = "{|| let addr = ($env.SSH_CONNECTION | split row ' ' | get 2); if $addr == '127.0.0.61' { error make {msg: 'disk full'} }; [$addr $addr] }";

#[test]
fn a_failing_session_does_not_stop_the_others_and_is_named() {
    let sb = Sandbox::new();
    let (_servers, config) = three_hosts(&sb);
    let seen = sb.path().join("seen.jsonl");
    let out = sb.ssh_json(
        &config,
        &format!(
            "let all = new-session web1 web2 web3
             let error = try {{
               invoke-session $all {FAILS_ON_WEB2} | each {{|v| $v | to json -r | $in + (char nl) | save --append '{seen}'; $v }} | ignore
               'no error'
             }} catch {{|e| $e.msg }}
             {{ error: $error, seen: (open '{seen}' | lines | each {{ from json }}) }}",
            seen = seen.display()
        ),
    );
    // The other sessions ran to the end, in order (each value as it would be locally: a list
    // stays a list); then the failure, naming where.
    assert_eq!(
        out["seen"],
        json!([["127.0.0.60", "127.0.0.60"], ["127.0.0.62", "127.0.0.62"]])
    );
    assert_eq!(out["error"], json!("on web2 (session 2): disk full"));
}

#[test]
fn several_failures_say_how_many() {
    let sb = Sandbox::new();
    let (_servers, config) = three_hosts(&sb);
    let out = sb.ssh_json(
        &config,
        "let all = new-session web1 web2 web3
         try { invoke-session $all { error make {msg: 'no'} } | ignore; 'no error' } catch {|e| $e.msg }",
    );
    assert_eq!(
        out,
        json!("3 of 3 sessions failed; the first on web1 (session 1): no")
    );
}

#[test]
fn by_session_gives_one_record_per_session_with_errors_as_data() {
    let sb = Sandbox::new();
    let (_servers, config) = three_hosts(&sb);
    let out = sb.ssh_json(
        &config,
        &format!(
            "let all = new-session web1 web2 web3
             disconnect-session 3 | ignore
             invoke-session $all --by-session {FAILS_ON_WEB2}
             | update duration {{|r| ($r.duration | describe) == 'duration' }}
             | update error {{|r| $r.error.msg? }}"
        ),
    );
    assert_eq!(
        out,
        json!([
            {"id": 1, "name": "Session1", "computer_name": "web1", "output": ["127.0.0.60", "127.0.0.60"], "error": null, "duration": true},
            {"id": 2, "name": "Session2", "computer_name": "web2", "output": null, "error": "disk full", "duration": true},
            {"id": 3, "name": "Session3", "computer_name": "web3", "output": null,
             "error": "session 3 (Session3) is Disconnected, not Opened: it cannot run code", "duration": true}
        ])
    );
    // The fleet script of COMMANDS.md.
    let failed = sb.ssh_json(
        &config,
        &format!(
            "let all = new-session web1 web2 web3
             invoke-session $all --by-session {FAILS_ON_WEB2} | where error != null | get computer_name"
        ),
    );
    assert_eq!(failed, json!(["web2"]));
}

#[test]
fn a_failed_login_is_not_remembered_for_the_host() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.63");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let out = sb.ssh_json(
        &config,
        &format!(
            "let wrong = try {{ new-session {computer} --identity-file /no/such/key; 'opened' }} catch {{ 'failed' }}
             {{ wrong: $wrong, right: (new-session {computer} | get 0.state) }}"
        ),
    );
    assert_eq!(out, json!({"wrong": "failed", "right": "Opened"}));
}

#[test]
fn a_list_of_computers_lists_and_connects_the_sessions_of_each() {
    let sb = Sandbox::new();
    let (_servers, config) = three_hosts(&sb);
    sb.ssh_json(
        &config,
        "new-session web1 web2 --name job | disconnect-session | length",
    );
    let out = sb.ssh_json(
        &config,
        "let connected = get-session --computer-name [web1 web2] | where state == Disconnected | connect-session
         { connected: ($connected | select computer_name name state), listed: (get-session --computer-name [web1 web2 web3] | length) }",
    );
    assert_eq!(
        out,
        json!({
            "connected": [
                {"computer_name": "web1", "name": "job", "state": "Opened"},
                {"computer_name": "web2", "name": "job", "state": "Opened"}
            ],
            "listed": 2
        })
    );
}

#[test]
fn an_unreachable_computer_is_an_error_row_not_the_end_of_the_listing() {
    let sb = Sandbox::new();
    let (_servers, config) = three_hosts(&sb);
    let dead = {
        let listener = std::net::TcpListener::bind(("127.0.0.64", 0)).expect("port");
        listener.local_addr().expect("port").port()
    };
    let out = sb.ssh_json(
        &config,
        &format!(
            "new-session web1 web3 --name job | ignore
             get-session --computer-name [web1 nobody@127.0.0.64:{dead} web3] --connect-timeout 5sec
             | each {{|r| try {{ $r.computer_name }} catch {{|e| $e.msg }} }}"
        ),
    );
    let rows = out.as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0], json!("web1"));
    assert_eq!(rows[1], json!("web3"));
    let error = rows[2].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("on nobody@127.0.0.64:{dead}: ")),
        "{error}"
    );
    // Alone, an unreachable computer is the command's error.
    let alone = sb.ssh_run(
        &config,
        &format!("get-session --computer-name nobody@127.0.0.64:{dead} --connect-timeout 5sec"),
    );
    assert!(!alone.status.success());
}

#[test]
fn a_session_removed_elsewhere_is_closed_and_no_longer_listed_there() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.65");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let out = sb.ssh_json(
        &config,
        &format!(
            "let s = new-session {computer} --name gone
             disconnect-session $s | ignore
             ^$nu.current-exe -n --no-std-lib --plugins $'[(plugin list | where name == session | get 0.filename)]' -c 'get-session --computer-name {computer} | remove-session'
             {{ listed: (get-session --computer-name {computer} | length), state: ($s | get-session | get 0.state) }}"
        ),
    );
    assert_eq!(out, json!({"listed": 0, "state": "Closed"}));
}

#[test]
fn empty_input_selects_nothing_and_no_input_is_an_error() {
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session --name keep | ignore
         {
           remove: (get-session --name 'tmp*' | remove-session)
           disconnect: (get-session --name 'tmp*' | disconnect-session)
           connect: (get-session --name 'tmp*' | connect-session)
           receive: ([] | receive-session)
           invoke: (invoke-session (get-session --name 'tmp*') { 1 })
           by_session: (invoke-session (get-session --name 'tmp*') --by-session { 1 })
           none: (try { remove-session; 'no error' } catch {|e| $e.msg })
           kept: (get-session | get name)
         }",
    );
    assert_eq!(
        out,
        json!({
            "remove": null, "disconnect": [], "connect": [], "receive": [], "invoke": null,
            "by_session": [], "none": "no sessions to remove", "kept": ["keep"]
        })
    );
}

#[test]
fn arguments_complete_to_sessions_and_computers() {
    let sb = Sandbox::new();
    let config = sb.ssh_config(
        &[],
        "Host web1 web2 *.lab\n  User nobody\nHost db\n  HostName 10.0.0.9\n",
    );
    let out = sb.ssh_json(
        &config,
        "new-session --name alpha | ignore
         {
           computers: ('new-session ' | commandline complete)
           sessions: ('remove-session ' | commandline complete --detailed | select value description)
           names: ('connect-session --name ' | commandline complete)
           flag: ('get-session --computer-name w' | commandline complete)
           enter: ('enter-session ' | commandline complete)
         }",
    );
    assert_eq!(out["computers"], json!(["db", "localhost", "web1", "web2"]));
    assert_eq!(
        out["sessions"],
        json!([{"value": "1", "description": "alpha on localhost (Opened)"}])
    );
    assert_eq!(out["names"], json!(["alpha"]));
    assert_eq!(out["flag"], json!(["web1", "web2"]));
    assert_eq!(
        out["enter"],
        json!(["1", "db", "localhost", "web1", "web2"])
    );
}
