//! A real OpenSSH server on a loopback address (or inside a network namespace), set up the way
//! real servers are: PAM on, and each server's account a non-root user of its own
//! ([`RemoteUser`]) with nothing of nu-session preset — no `NU_SESSION_DIR`, no PATH with
//! `nu-session-host` in it (clients copy theirs there), unless a test says otherwise with extra
//! `sshd_config` lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Sandbox;
use crate::netns::NetNs;
use crate::process::{children_of, eventually, run_quiet};
use crate::users::RemoteUser;

pub struct Sshd {
    child: Child,
    dir: PathBuf,
    pub address: String,
    pub port: u16,
    /// The server's public host key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    /// The account clients log in to.
    pub user: RemoteUser,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// How clients name this server: `user@address:port`.
    pub fn computer(&self) -> String {
        format!("{}@{}:{}", self.user.name, self.address, self.port)
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        match self.port {
            // As OpenSSH writes it: the bare name for the default port.
            22 => format!("{} {}", self.address, self.host_key),
            port => format!("[{}]:{port} {}", self.address, self.host_key),
        }
    }

    /// What the server logged (raise `LogLevel` with [`Sandbox::sshd_with`] to see more).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Kills (SIGKILL) the per-connection sshd processes (each connection's monitor and its
    /// unprivileged child running as the user): every client connection drops as if the server
    /// side had crashed; the listener stays. Returns how many connections were killed.
    pub fn kill_connections(&self) -> usize {
        let (connections, tree) = self.connection_tree();
        for pid in &tree {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        connections
    }

    /// Stops (SIGSTOP) the server's side of every connection open now, as a stalled network
    /// or a frozen server looks: nothing is read or sent, nothing is closed. They are killed
    /// when the returned guard is dropped.
    pub fn stop_connections(&self) -> Stopped {
        let (_, tree) = self.connection_tree();
        for pid in &tree {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Stopped(tree)
    }

    /// How many connections there are, and every process serving them.
    fn connection_tree(&self) -> (usize, Vec<i32>) {
        let connections = children_of(self.child.id() as i32);
        let mut tree = connections.clone();
        let mut i = 0;
        while i < tree.len() {
            let children = children_of(tree[i]);
            tree.extend(children);
            i += 1;
        }
        (connections.len(), tree)
    }

    /// Pids of the session workers of this server's user.
    pub fn worker_pids(&self) -> Vec<i32> {
        crate::sandbox::worker_pids_in(&self.user.host_dir())
    }
}

impl Sandbox {
    /// Starts `sshd` on `address` (e.g. 127.0.0.2) with a fresh host key and a user of its own.
    pub fn sshd(&self, address: &str) -> Sshd {
        self.sshd_with(address, "")
    }

    /// Like [`Sandbox::sshd`], with `extra` sshd_config lines (they win: sshd keeps the first
    /// value of a keyword).
    pub fn sshd_with(&self, address: &str, extra: &str) -> Sshd {
        self.sshd_in(None, address, extra)
    }

    /// Like [`Sandbox::sshd_with`], running inside the network namespace `netns` when given
    /// (listening on port 22 of `address` there).
    pub fn sshd_in(&self, netns: Option<&NetNs>, address: &str, extra: &str) -> Sshd {
        self.sshd_for(RemoteUser::lease(), netns, address, extra)
    }

    /// Like [`Sandbox::sshd`], presenting a host certificate (`HostCertificate`): its host key
    /// signed by the CA key `ca` with `ssh-keygen -s ca -h` and `sign` (`-n`, `-V` ...).
    pub fn sshd_certified(&self, address: &str, ca: &Path, sign: &[&str]) -> Sshd {
        let dir = self.path().join(format!("sshd-{address}"));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let host_key = dir.join("host_ed25519");
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(ca)
                .args(["-I", address, "-h"])
                .args(sign)
                .arg(host_key.with_extension("pub")),
        );
        let certificate = dir.join("host_ed25519-cert.pub");
        self.sshd_with(
            address,
            &format!("HostCertificate {}", certificate.display()),
        )
    }

    /// Like [`Sandbox::sshd_in`], for a user the test chose.
    pub fn sshd_for(
        &self,
        user: RemoteUser,
        netns: Option<&NetNs>,
        address: &str,
        extra: &str,
    ) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "no /usr/sbin/sshd: scripts/test.sh installs openssh-server"
        );
        // Privilege separation needs this directory when sshd runs as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        self.client_key();
        let dir = self.path().join(format!("sshd-{address}"));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let host_key = dir.join("host_ed25519");
        // Made before by a test that certifies it ([`Sandbox::sshd_certified`]).
        if !host_key.exists() {
            run_quiet(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&host_key),
            );
        }
        let port = match netns {
            Some(_) => 22,
            None => {
                let listener = std::net::TcpListener::bind((address, 0)).expect("free port");
                listener.local_addr().expect("port").port()
            }
        };
        let config = dir.join("sshd_config");
        // PAM as on a stock server (where pam_systemd would also set XDG_RUNTIME_DIR).
        let pam = if Path::new("/etc/pam.d/sshd").exists() {
            "yes"
        } else {
            "no"
        };
        std::fs::write(
            &config,
            format!(
                "{extra}\nListenAddress {address}\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM {pam}\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers {}\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n",
                host_key.display(),
                self.authorized_keys().display(),
                user.name,
            ),
        )
        .expect("sshd_config");
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &ns.name]).arg(sshd);
                command
            }
            None => Command::new(sshd),
        };
        let child = command
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).expect("log"))
            .spawn()
            .expect("start sshd");
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
                address, port
            ))
            .is_ok()),
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        let host_key = std::fs::read_to_string(host_key.with_extension("pub"))
            .expect("host key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Sshd {
            child,
            dir,
            address: address.to_string(),
            port,
            host_key,
            user,
        }
    }
}

/// Stopped server processes ([`Sshd::stop_connections`]); killed when dropped.
pub struct Stopped(pub Vec<i32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}
