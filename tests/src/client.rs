//! [`UserClient`]: `nu` run by a non-root user, as a new user runs it: its own home and `~/.ssh`
//! (key, config, known_hosts), the plugin with `nu-session-host` next to it in a directory it
//! can read, and nothing of nu-session preset (no `NU_SESSION_DIR`, no `NU_SESSION_HOST`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::process::{run_quiet, shell_quote};
use crate::users::RemoteUser;
use crate::{Sandbox, Sshd, bin_dir, nu_binary};

pub struct UserClient {
    pub user: RemoteUser,
    /// `nu`, `nu_plugin_session` and `nu-session-host`, readable by the user.
    bin: PathBuf,
}

impl Sandbox {
    /// A client user of its own, whose key the sandbox's servers accept.
    pub fn user_client(&self) -> UserClient {
        let user = RemoteUser::lease();
        let bin = self.path().join(format!("bin-{}", user.name));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (from, name) in [
            (nu_binary(), "nu"),
            (bin_dir().join("nu_plugin_session"), "nu_plugin_session"),
            (bin_dir().join("nu-session-host"), "nu-session-host"),
        ] {
            // Hard links: the originals may be in directories the user cannot enter.
            std::fs::hard_link(&from, bin.join(name))
                .or_else(|_| std::fs::copy(&from, bin.join(name)).map(|_| ()))
                .expect("link a binary");
        }
        let ssh = user.home.join(".ssh");
        let _ = std::fs::remove_dir_all(&ssh);
        std::fs::create_dir_all(&ssh).expect(".ssh");
        let key = ssh.join("id_ed25519");
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        self.authorize(&key.with_extension("pub"));
        chown_tree(&ssh, &user);
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        UserClient { user, bin }
    }
}

fn chown_tree(path: &Path, user: &RemoteUser) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), user);
        }
    }
}

impl UserClient {
    /// Writes `~/.ssh/config` (`extra` first) and `~/.ssh/known_hosts` trusting `servers`.
    pub fn trust(&self, servers: &[&Sshd], extra: &str) {
        let ssh = self.user.home.join(".ssh");
        let known: Vec<String> = servers.iter().map(|s| s.known_hosts_line()).collect();
        std::fs::write(ssh.join("known_hosts"), known.join("\n") + "\n").expect("known_hosts");
        std::fs::write(ssh.join("config"), extra).expect("ssh config");
        chown_tree(&ssh, &self.user);
    }

    /// `nu -c script` as this user, in its home, with the plugin.
    pub fn command(&self, script: &str) -> Command {
        let mut command = Command::new(self.bin.join("nu"));
        self.prepare(&mut command);
        command.args(self.nu_args(script));
        command
    }

    fn nu_args(&self, script: &str) -> Vec<String> {
        vec![
            "-n".into(),
            "--no-std-lib".into(),
            "--plugins".into(),
            format!("[{}]", self.bin.join("nu_plugin_session").display()),
            "-c".into(),
            script.into(),
        ]
    }

    fn prepare(&self, command: &mut Command) {
        command
            .env_clear()
            .env("HOME", &self.user.home)
            .env("USER", &self.user.name)
            .env("LOGNAME", &self.user.name)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TERM", "xterm-256color")
            .current_dir(&self.user.home)
            .uid(self.user.uid)
            // Setting the uid also drops root's supplementary groups.
            .gid(self.user.gid)
            .stdin(Stdio::null());
    }

    pub fn run(&self, script: &str) -> Output {
        let mut command = self.command(script);
        // No controlling terminal: nothing may ask the developer running the tests for input.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        command.output().expect("run nu")
    }

    /// Runs a script whose value is printed as JSON; it must succeed.
    pub fn json(&self, script: &str) -> serde_json::Value {
        let out = self.run(&format!("{script} | to json -r"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "script failed: {script}\n--- stdout\n{stdout}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// Runs a script in a pseudo-terminal (`script(1)`); what the terminal showed.
    pub fn pty_run(&self, script: &str) -> String {
        let line = std::iter::once(self.bin.join("nu").display().to_string())
            .chain(self.nu_args(script))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new("script");
        self.prepare(&mut command);
        let out = command
            .args(["-qec", &line, "/dev/null"])
            .output()
            .expect("run script(1)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host program next to this user's plugin.
    pub fn host_program(&self) -> PathBuf {
        self.bin.join("nu-session-host")
    }
}
