//! Where a host keeps its sockets: one private directory per user, with a directory per protocol
//! version inside, so that hosts of different protocol versions never share (or fight over) a
//! socket: an upgrade that changes the protocol leaves the earlier version's sessions running
//! beside the new ones.
//!
//! ```text
//! <base>/                        0700, owned by the user (checked, like tmux)
//!   p<protocol>/                 0700: the root of one protocol version (PROTOCOL_VERSION)
//!     manager.sock               the manager's socket
//!     manager.lock               held (flock) by the running manager
//!     manager.pid                the running manager's pid
//!     manager.log                the manager's diagnostics (over 1 MiB, the next manager
//!                                moves it to manager.log.1)
//!     sessions/<instance id>.sock   a session's worker socket
//!     sessions/<instance id>.json   the session's settings, pid and version, written by its worker
//!     sessions/<instance id>.log    the worker's own diagnostics
//!     sessions/<instance id>.ended  why the session ended (kept a week for clients that knew it)
//! ```
//!
//! The base is `$NU_SESSION_DIR` if set, else `/tmp/nu-session-<uid>`. Not `$XDG_RUNTIME_DIR`:
//! logind deletes that directory when the user's last login ends, and with it the sockets of
//! every session left running (tmux keeps its sockets in `/tmp/tmux-<uid>` for the same reason).
//! Hosts of protocol 3 and earlier kept their `sessions/` directly in the base (or in
//! `$XDG_RUNTIME_DIR/nu-session`).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Overrides the base directory (tests and benchmarks use their own).
pub const DIR_ENV: &str = "NU_SESSION_DIR";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout for the current user and this protocol version, from the environment.
    pub fn from_env() -> Self {
        Layout::under(base_from_env())
    }

    /// The layout of this protocol version under the base directory `base`.
    pub fn under(base: impl Into<PathBuf>) -> Self {
        Layout {
            root: base.into().join(format!("p{}", crate::PROTOCOL_VERSION)),
        }
    }

    /// The base directory: the one above the protocol version's root.
    pub fn base(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manager_socket(&self) -> PathBuf {
        self.root.join("manager.sock")
    }

    pub fn manager_lock(&self) -> PathBuf {
        self.root.join("manager.lock")
    }

    pub fn manager_pid(&self) -> PathBuf {
        self.root.join("manager.pid")
    }

    pub fn manager_log(&self) -> PathBuf {
        self.root.join("manager.log")
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.root.join("sessions")
    }

    pub fn session_socket(&self, id: Uuid) -> PathBuf {
        self.sessions_dir().join(format!("{id}.sock"))
    }

    pub fn session_meta(&self, id: Uuid) -> PathBuf {
        self.sessions_dir().join(format!("{id}.json"))
    }

    pub fn session_log(&self, id: Uuid) -> PathBuf {
        self.sessions_dir().join(format!("{id}.log"))
    }

    /// Why the session ended, written when it ends and kept for a while for clients that were
    /// attached to it.
    pub fn session_ended(&self, id: Uuid) -> PathBuf {
        self.sessions_dir().join(format!("{id}.ended"))
    }

    /// Creates the directory tree (0700) if missing, and refuses to use it unless it is a real
    /// directory owned by this user that nobody else can read or write.
    pub fn ensure_private(&self) -> io::Result<()> {
        for dir in [
            self.base().to_path_buf(),
            self.root.clone(),
            self.sessions_dir(),
        ] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .recursive(true)
                        .create(&dir)?;
                }
                Err(e) => return Err(e),
            }
            check_private(&dir)?;
        }
        Ok(())
    }

    /// Like [`Layout::ensure_private`] but never creates anything: for clients, which must not
    /// talk to sockets in a directory someone else controls.
    pub fn check_private(&self) -> io::Result<()> {
        check_private(self.base())?;
        check_private(&self.root)?;
        check_private(&self.sessions_dir())
    }
}

/// `$NU_SESSION_DIR`, else `/tmp/nu-session-<uid>`.
pub fn base_from_env() -> PathBuf {
    match std::env::var_os(DIR_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/nu-session-{}", unsafe { libc::getuid() })),
    }
}

fn check_private(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to use {}: {why}", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("it is not a directory (a symbolic link or a file)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by you (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "its mode is {:o}; it must be accessible only by you (chmod 700)",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nu-session-layout-{}", Uuid::new_v4()));
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_a_private_tree() {
        let base = scratch();
        let layout = Layout::under(base.join("a/b"));
        layout.ensure_private().unwrap();
        for dir in [
            base.join("a/b"),
            layout.root().to_path_buf(),
            layout.sessions_dir(),
        ] {
            assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "{dir:?}");
        }
        assert_eq!(layout.base(), base.join("a/b"));
        assert_eq!(
            layout.root(),
            base.join(format!("a/b/p{}", crate::PROTOCOL_VERSION))
        );
        layout.check_private().unwrap();
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn refuses_a_directory_others_can_enter() {
        let base = scratch();
        let layout = Layout::under(base.join("rt"));
        layout.ensure_private().unwrap();
        fs::set_permissions(layout.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = layout.ensure_private().unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn refuses_a_directory_owned_by_someone_else() {
        // Only root can give a directory away; elsewhere this case cannot be set up.
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let base = scratch();
        let layout = Layout::under(base.join("rt"));
        layout.ensure_private().unwrap();
        std::os::unix::fs::chown(layout.root(), Some(65534), Some(65534)).unwrap();
        let err = layout.ensure_private().unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        assert!(layout.check_private().is_err());
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn refuses_a_symlink() {
        let base = scratch();
        let real = base.join("real");
        Layout::under(&real).ensure_private().unwrap();
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
        let err = Layout::under(base.join("link"))
            .check_private()
            .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        fs::remove_dir_all(base).unwrap();
    }
}
