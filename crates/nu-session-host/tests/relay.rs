//! `nu-session-host connect` relays the protocol over stdin/stdout, starting the manager when
//! needed, after a preamble that marks where the protocol begins.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use nu_session_host::relay::PREAMBLE;
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    ClientMessage, Hello, HostMessage, SessionSettings, encode_frame, read_frame,
};

#[test]
fn connect_relays_to_a_manager_it_starts_and_on_to_a_session() {
    let dir = tempfile::Builder::new()
        .prefix("nsr")
        .tempdir_in("/tmp")
        .unwrap();
    let runtime = dir.path().join("rt");
    let relay = |session: Option<String>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nu-session-host"));
        command.arg("connect").arg("--dir").arg(&runtime);
        if let Some(id) = session {
            command.arg("--session").arg(id);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut preamble = vec![0u8; PREAMBLE.len()];
        out.read_exact(&mut preamble).unwrap();
        assert_eq!(preamble, PREAMBLE);
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(&encode_frame(&ClientMessage::Hello(Hello::current())).unwrap())
            .unwrap();
        assert!(matches!(
            read_frame::<HostMessage>(&mut out).unwrap(),
            Some(HostMessage::Hello(_))
        ));
        (child, input, out)
    };

    // To the manager (which it starts): create a session.
    let (mut child, mut input, mut out) = relay(None);
    let settings = SessionSettings {
        name: "relayed".into(),
        configuration_name: "default".into(),
        idle_timeout: std::time::Duration::from_secs(60),
        output_buffering: Default::default(),
    };
    input
        .write_all(&encode_frame(&ClientMessage::CreateSession(settings)).unwrap())
        .unwrap();
    let info = match read_frame::<HostMessage>(&mut out).unwrap() {
        Some(HostMessage::Created(info)) => info,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(info.name, "relayed");
    drop(input);
    assert!(child.wait().unwrap().success());

    // To the session: remove it.
    let (mut child, mut input, mut out) = relay(Some(info.instance_id.to_string()));
    let remove = ClientMessage::RemoveSession {
        instance_id: info.instance_id,
    };
    input.write_all(&encode_frame(&remove).unwrap()).unwrap();
    assert!(matches!(
        read_frame::<HostMessage>(&mut out).unwrap(),
        Some(HostMessage::Removed { .. })
    ));
    drop(input);
    let _ = child.wait();

    if let Ok(pid) = std::fs::read_to_string(Layout::under(&runtime).manager_pid()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid.trim().parse().unwrap_or(0), libc::SIGKILL) };
    }
}

#[test]
fn connect_to_a_missing_session_says_so() {
    let dir = tempfile::Builder::new()
        .prefix("nsr")
        .tempdir_in("/tmp")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nu-session-host"))
        .args(["connect", "--dir"])
        .arg(dir.path().join("rt"))
        .args(["--session", "00000000-0000-4000-8000-000000000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no session 00000000-0000-4000-8000-000000000000 on this host"),
        "{stderr}"
    );
}
