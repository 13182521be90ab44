//! [`Agent`]: a real `ssh-agent` on a socket of the sandbox, holding the keys a test gives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Sandbox;
use crate::process::{eventually, run_quiet};

pub struct Agent {
    child: Child,
    /// The agent's socket (what `SSH_AUTH_SOCK` or `IdentityAgent` name).
    pub socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Adds the private key `key` (unencrypted).
    pub fn add(&self, key: &Path) {
        run_quiet(
            Command::new("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &self.socket),
        );
    }
}

impl Sandbox {
    /// Starts an ssh-agent named `name` holding `keys`, in order.
    pub fn agent(&self, name: &str, keys: &[&Path]) -> Agent {
        let socket = self.path().join(format!("agent-{name}.sock"));
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        assert!(
            eventually(Duration::from_secs(10), || socket.exists()),
            "ssh-agent did not start"
        );
        let agent = Agent { child, socket };
        for key in keys {
            agent.add(key);
        }
        agent
    }

    /// A new key pair named `name` in the sandbox, not authorized anywhere: its private key.
    pub fn stray_key(&self, name: &str) -> PathBuf {
        let key = self.path().join(name);
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        key
    }
}
