//! Unix users that stand for the accounts of remote computers, as they are in the wild: not root,
//! a home of their own, nothing of nu-session preset (no `NU_SESSION_DIR`, no PATH tweaks).
//!
//! `scripts/test.sh` creates the pool (`nsu001` … `nsu100`, see `scripts/lib.sh`); each test
//! leases the users it needs, one per host it simulates (each has its own runtime directory and
//! manager, as separate machines do), and a leased user is the test's alone until dropped.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{eventually, pids_of_user};

/// The pool's names: `nsu001` … `nsu100`.
pub const POOL_SIZE: usize = 100;
const LOCKS: &str = "/tmp/nu-session-test-users";

pub struct RemoteUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Held (flock) while leased.
    _lock: File,
}

impl RemoteUser {
    /// A user of the pool that no other test holds, with nothing left of an earlier test: no
    /// processes, no runtime directory. Copies of the host program in its home stay (as on a
    /// real server a client used before).
    pub fn lease() -> RemoteUser {
        Self::lease_from(1)
    }

    /// Like [`RemoteUser::lease`], trying the pool from its `first` user on (the fleet
    /// benchmark's users come after the tests').
    pub fn lease_from(first: usize) -> RemoteUser {
        std::fs::create_dir_all(LOCKS).expect("lock dir");
        for n in first..=POOL_SIZE {
            let name = format!("nsu{n:03}");
            let Some((uid, gid, home)) = passwd_entry(&name).filter(|(uid, ..)| *uid != 0) else {
                panic!(
                    "there is no user {name}: scripts/test.sh creates the test users (nsu001 to nsu{POOL_SIZE:03}); it needs root"
                );
            };
            let lock = File::create(Path::new(LOCKS).join(&name)).expect("lock file");
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            let user = RemoteUser {
                name,
                uid,
                gid,
                home,
                _lock: lock,
            };
            user.reset();
            return user;
        }
        panic!("every test user is leased");
    }

    /// The base runtime directory nu-session-host uses for this user by default.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/nu-session-{}", self.uid))
    }

    /// Where this version's host keeps the user's sessions.
    pub fn host_dir(&self) -> PathBuf {
        nu_session_protocol::layout::Layout::under(self.runtime_dir())
            .root()
            .to_path_buf()
    }

    /// Where clients copy the host program to (`~/.local/share/nu-session/host`).
    pub fn deployed_dir(&self) -> PathBuf {
        self.home.join(".local/share/nu-session/host")
    }

    /// Removes every copy of the host program clients made for this user.
    pub fn forget_host_program(&self) {
        let _ = std::fs::remove_dir_all(self.deployed_dir());
    }

    /// A directory in `parent` this user owns (for files the session's code writes).
    pub fn scratch(&self, parent: &Path) -> PathBuf {
        let dir = parent.join(format!("scratch-{}", self.name));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.gid)).expect("chown scratch");
        dir
    }

    /// Kills every process of the user and removes its runtime directory.
    pub fn reset(&self) {
        let gone = eventually(Duration::from_secs(5), || {
            let pids = pids_of_user(self.uid);
            for pid in &pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            pids.is_empty()
        });
        assert!(gone, "the processes of {} do not end", self.name);
        let _ = std::fs::remove_dir_all(self.runtime_dir());
    }
}

impl Drop for RemoteUser {
    fn drop(&mut self) {
        self.reset();
    }
}

/// uid, gid and home of `name`, from /etc/passwd.
fn passwd_entry(name: &str) -> Option<(u32, u32, PathBuf)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[0] == name).then(|| {
            Some((
                fields[2].parse().ok()?,
                fields[3].parse().ok()?,
                PathBuf::from(fields[5]),
            ))
        })?
    })
}
