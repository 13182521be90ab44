//! A live manager in a private runtime directory, for the tests that talk to it directly.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nu_session_protocol::{
    ClientMessage, Hello, HostMessage, layout::Layout, read_frame, write_frame,
};

pub struct Manager {
    pub child: Child,
    pub layout: Layout,
    _dir: tempfile::TempDir,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_manager() -> Manager {
    let dir = tempfile::Builder::new()
        .prefix("nsh")
        .tempdir_in("/tmp")
        .unwrap();
    let layout = Layout::under(dir.path().join("rt"));
    let child = Command::new(env!("CARGO_BIN_EXE_nu-session-host"))
        .args(["manager", "--dir"])
        .arg(layout.base())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(layout.manager_socket()).is_err() {
        assert!(Instant::now() < deadline, "manager did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Manager {
        child,
        layout,
        _dir: dir,
    }
}

pub fn connect(manager: &Manager) -> UnixStream {
    let stream = UnixStream::connect(manager.layout.manager_socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

pub fn hello(stream: &mut UnixStream) {
    write_frame(stream, &ClientMessage::Hello(Hello::current())).unwrap();
    assert!(matches!(
        read_frame::<HostMessage>(stream).unwrap(),
        Some(HostMessage::Hello(_))
    ));
}
