//! A live manager fed malformed, oversize and unexpected frames answers with an error, closes
//! that connection, and goes on serving everyone else.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nu_session_protocol::{ClientMessage, Hello, HostMessage, read_frame, write_frame};

mod common;

use common::{Manager, connect, hello, start_manager};

/// After the peer's error answer, the connection is closed.
fn assert_refused_and_closed(stream: &mut UnixStream) {
    match read_frame::<HostMessage>(stream) {
        Ok(Some(HostMessage::Error(e))) => {
            assert!(e.msg.contains("closing the connection"), "{e:?}")
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

fn still_serves(manager: &Manager) {
    let mut stream = connect(manager);
    hello(&mut stream);
    write_frame(&mut stream, &ClientMessage::ListSessions).unwrap();
    assert!(matches!(
        read_frame::<HostMessage>(&mut stream).unwrap(),
        Some(HostMessage::Sessions(sessions)) if sessions.is_empty()
    ));
}

#[test]
fn garbage_after_hello_is_refused_and_the_manager_lives_on() {
    let manager = start_manager();
    let mut stream = connect(&manager);
    hello(&mut stream);
    let garbage = b"\x00\x00\x00\x10this is no frame";
    stream.write_all(garbage).unwrap();
    assert_refused_and_closed(&mut stream);
    still_serves(&manager);
}

#[test]
fn an_oversize_frame_is_refused_without_reading_it() {
    let manager = start_manager();
    let mut stream = connect(&manager);
    hello(&mut stream);
    stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_refused_and_closed(&mut stream);
    still_serves(&manager);
}

#[test]
fn a_connection_that_skips_the_hello_is_dropped() {
    let manager = start_manager();
    let mut stream = connect(&manager);
    write_frame(&mut stream, &ClientMessage::ListSessions).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered without a hello");
    still_serves(&manager);
}

#[test]
fn a_wrong_protocol_version_gets_an_error_naming_both() {
    let manager = start_manager();
    let mut stream = connect(&manager);
    let hello = Hello {
        protocol_version: 999,
        software_version: "9.9.9".into(),
        ..Hello::current()
    };
    write_frame(&mut stream, &ClientMessage::Hello(hello)).unwrap();
    match read_frame::<HostMessage>(&mut stream).unwrap() {
        Some(HostMessage::Error(e)) => {
            assert!(e.msg.contains("protocol 999"), "{}", e.msg);
            assert!(e.msg.contains("9.9.9"), "{}", e.msg);
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    still_serves(&manager);
}
