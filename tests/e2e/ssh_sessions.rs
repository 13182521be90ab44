//! Sessions over SSH, end to end: a real nu with the built plugin, a real OpenSSH sshd on
//! loopback running the built nu-session-host.

use nu_session_tests::Sandbox;
use serde_json::json;

#[test]
fn a_session_over_ssh_keeps_state_and_runs_as_the_remote_user() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.2");
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer("root");
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
            "record": {"computer_name": computer, "transport": "SSH", "state": "Opened", "user": "root", "port": server.port},
            "whoami": "root",
            "state": {"x": 21, "pwd": "/"}
        })
    );
}
