//! The session's stdout and stderr: `print`, and external commands that are not the last in their
//! pipeline, write there as they would at a terminal. File descriptors 1 and 2 become pipes whose
//! bytes are forwarded to the client as `Output` events.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nu_session_protocol::EventBody;

use super::outbox::Outbox;

pub struct OutputCapture {
    readers: Vec<Arc<OwnedFd>>,
    in_flight: Arc<AtomicUsize>,
}

impl OutputCapture {
    /// Replaces fds 1 and 2 with pipes forwarded into `outbox`. Output is attributed to the
    /// invocation in `running` (0: none) when it is read.
    pub fn start(outbox: Arc<Outbox>, running: Arc<AtomicU64>) -> io::Result<OutputCapture> {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for (target, stderr) in [(1, false), (2, true)] {
            let mut fds = [0; 2];
            // SAFETY: fds is a valid array of two ints.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 just returned these two fresh descriptors; we own them.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: both descriptors are open; dup2 onto 1/2 is what we mean to do.
            if unsafe { libc::dup2(write.as_raw_fd(), target) } < 0 {
                return Err(io::Error::last_os_error());
            }
            drop(write);
            let read = Arc::new(read);
            readers.push(read.clone());
            let outbox = outbox.clone();
            let in_flight = in_flight.clone();
            let running = running.clone();
            std::thread::Builder::new()
                .name(format!("forward-fd{target}"))
                .spawn(move || forward(&read, stderr, &outbox, &in_flight, &running))?;
        }
        Ok(OutputCapture { readers, in_flight })
    }

    /// Waits (briefly) until everything written so far has been forwarded, so that output
    /// printed before a value arrives before it.
    pub fn drain(&self) {
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            let pending: i32 = self.readers.iter().map(|fd| unread_bytes(fd)).sum();
            if pending == 0 && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn unread_bytes(fd: &OwnedFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer; fd is open.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

fn forward(
    fd: &OwnedFd,
    stderr: bool,
    outbox: &Outbox,
    in_flight: &AtomicUsize,
    running: &AtomicU64,
) {
    // SAFETY: dup gives us our own descriptor for the File to own and close.
    let dup = unsafe { libc::dup(fd.as_raw_fd()) };
    if dup < 0 {
        return;
    }
    // SAFETY: dup returned a fresh descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(dup) };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let call_id = Some(running.load(Ordering::SeqCst)).filter(|id| *id != 0);
                // At most 64 KiB: always within the message limit.
                let _ = outbox.push(EventBody::Output {
                    call_id,
                    stderr,
                    bytes: buf[..n].to_vec(),
                });
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
