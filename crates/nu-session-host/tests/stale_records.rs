//! Session files whose pid now belongs to another process (a reboot with a persistent /tmp, or a
//! pid reused much later): the manager cleans them up without ever signalling that process.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use nu_session_protocol::{ClientMessage, HostMessage, read_frame, write_frame};
use uuid::Uuid;

mod common;

use common::{Manager, connect, hello, start_manager};

/// An unrelated process that leads its own process group, as a shell or a tmux server does.
fn bystander() -> Child {
    let mut command = Command::new("sleep");
    command.arg("60");
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// A session file left behind, naming `pid` as its worker, recorded as the process `process`.
fn stale_file(manager: &Manager, pid: u32, process: serde_json::Value) -> Uuid {
    let id = Uuid::new_v4();
    let file = serde_json::json!({
        "info": {
            "instance_id": id,
            "name": "Session1",
            "configuration_name": "default",
            "user": "someone",
            "created": "2026-01-01T00:00:00Z",
            "idle_timeout": {"secs": 7200, "nanos": 0},
            "output_buffering": "Block",
            "attached": false,
            "running": false,
            "disconnected_on": null
        },
        "pid": pid,
        "software_version": "0.1.0",
        "process": process,
    });
    std::fs::write(
        manager.layout.session_meta(id),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    id
}

fn ask(manager: &Manager, request: &ClientMessage) -> HostMessage {
    let mut stream = connect(manager);
    hello(&mut stream);
    write_frame(&mut stream, request).unwrap();
    read_frame::<HostMessage>(&mut stream).unwrap().unwrap()
}

/// The manager left `other` alone and removed `id`'s file.
fn assert_spared_and_cleaned(manager: &Manager, other: &mut Child, id: Uuid) {
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        other.try_wait().unwrap().is_none(),
        "the manager killed an unrelated process"
    );
    assert!(!manager.layout.session_meta(id).exists(), "left the file");
}

/// A process id from an earlier boot: never this one's.
const EARLIER_BOOT: &str = "5f0c6a7e-0000-4000-8000-000000000000";

#[test]
fn removing_a_session_whose_pid_was_reused_signals_nobody() {
    let manager = start_manager();
    let mut other = bystander();
    // From an earlier boot; and from this boot, but a process that started at another time.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let earlier_boot = stale_file(
        &manager,
        other.id(),
        serde_json::json!({"boot_id": EARLIER_BOOT, "start_time": 1}),
    );
    let other_start = stale_file(
        &manager,
        other.id(),
        serde_json::json!({"boot_id": boot.trim(), "start_time": 1}),
    );
    for id in [earlier_boot, other_start] {
        let answer = ask(&manager, &ClientMessage::RemoveSession { instance_id: id });
        assert!(
            matches!(answer, HostMessage::Removed { .. } | HostMessage::Error(_)),
            "{answer:?}"
        );
        assert_spared_and_cleaned(&manager, &mut other, id);
    }
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn listing_cleans_up_a_dead_workers_file_and_signals_nobody() {
    let manager = start_manager();
    let mut other = bystander();
    let id = stale_file(
        &manager,
        other.id(),
        serde_json::json!({"boot_id": EARLIER_BOOT, "start_time": 1}),
    );
    let answer = ask(&manager, &ClientMessage::ListSessions);
    assert!(
        matches!(&answer, HostMessage::Sessions(s) if s.is_empty()),
        "{answer:?}"
    );
    assert_spared_and_cleaned(&manager, &mut other, id);
    let _ = other.kill();
    let _ = other.wait();
}
