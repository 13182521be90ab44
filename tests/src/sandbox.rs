//! [`Sandbox`]: one test's world. A private runtime directory for the local host (so tests never
//! see each other's sessions or the user's), `nu` run inside it with the built plugin, the
//! client's SSH key and configuration, and on drop every local worker and manager killed.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use nu_session_protocol::layout::Layout;

use crate::process::{alive, run_quiet};
use crate::{bin_dir, nu_binary};

pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// Pids of the live session workers whose files are in a host's directory (`…/p<N>`).
pub(crate) fn worker_pids_in(host_dir: &Path) -> Vec<i32> {
    std::fs::read_dir(host_dir.join("sessions"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .filter_map(|v| v["pid"].as_i64())
        .map(|pid| pid as i32)
        .filter(|pid| alive(*pid))
        .collect()
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        // Short paths: Unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("nst")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // Other users (the remote accounts of the test servers) reach their scratch
        // directories and the authorized keys in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod sandbox");
        Sandbox { dir }
    }

    /// Host settings (`host.json`) for the hosts this sandbox's scripts start: the file is
    /// written and `$env.NU_SESSION_HOST_CONFIG` set for every script run after this.
    pub fn host_config(&self, json: &str) {
        std::fs::write(self.path().join("host.json"), json).expect("host.json");
    }

    fn host_config_env(&self) -> Option<PathBuf> {
        let path = self.path().join("host.json");
        path.exists().then_some(path)
    }

    /// The scratch directory of this test (files the scripts write, for example).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The base runtime directory of this machine's host in this sandbox (`NU_SESSION_DIR`).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("rt")
    }

    /// Where this machine's host keeps this version's sessions (`<runtime dir>/p<N>`).
    pub fn host_dir(&self) -> PathBuf {
        self.layout().root().to_path_buf()
    }

    pub fn layout(&self) -> Layout {
        Layout::under(self.runtime_dir())
    }

    /// `nu -c script` with the plugin loaded and this sandbox's runtime directory.
    pub fn command(&self, script: &str) -> Command {
        let bin = bin_dir();
        let mut command = Command::new(nu_binary());
        command
            .arg("-n")
            .arg("--no-std-lib")
            .arg("--plugins")
            .arg(format!("[{}]", bin.join("nu_plugin_session").display()))
            .arg("-c")
            .arg(script)
            .env("NU_SESSION_DIR", self.runtime_dir())
            .env("NU_SESSION_HOST", bin.join("nu-session-host"))
            .current_dir(self.path())
            .stdin(Stdio::null());
        if let Some(config) = self.host_config_env() {
            command.env("NU_SESSION_HOST_CONFIG", config);
        }
        // No controlling terminal: nothing may ask the developer running the tests for input.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        command
    }

    /// Runs a script to completion.
    pub fn run(&self, script: &str) -> Output {
        self.command(script).output().expect("run nu")
    }

    /// Runs a script that must succeed and returns its stdout, trimmed.
    pub fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "script failed: {script}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a script whose value is printed as JSON (`| to json -r` is appended).
    pub fn json(&self, script: &str) -> serde_json::Value {
        let text = self.ok(&format!("{script} | to json -r"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Runs a script that must fail, and returns its stderr.
    pub fn fails(&self, script: &str) -> String {
        let out = self.run(script);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "script succeeded but should fail: {script}\n--- stdout\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !stderr.contains("panicked"),
            "the plugin panicked:\n{stderr}"
        );
        stderr
    }

    pub fn spawn(&self, script: &str) -> Child {
        self.command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nu")
    }

    /// A `nu` that holds a session named `name` (attached, so Busy for everyone else) until
    /// killed; returns once the session is open.
    pub fn hold_session(&self, name: &str) -> Child {
        let mut holder = self.spawn(&format!(
            "let s = new-session --name {name}; print ready; sleep 60sec"
        ));
        let stdout = holder.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready", "the holder did not open its session");
        holder
    }

    /// Pids of the session workers alive on this machine's host in this sandbox.
    pub fn worker_pids(&self) -> Vec<i32> {
        worker_pids_in(&self.host_dir())
    }

    /// The files of live sessions in the local runtime directory (not the records of why ended
    /// sessions ended, see [`Sandbox::end_records`]).
    pub fn session_files(&self) -> Vec<String> {
        self.sessions_dir_entries()
            .into_iter()
            .filter(|name| !name.ends_with(".ended"))
            .collect()
    }

    /// Why each ended session ended, as the host recorded it.
    pub fn end_records(&self) -> Vec<String> {
        self.sessions_dir_entries()
            .into_iter()
            .filter(|name| name.ends_with(".ended"))
            .filter_map(|name| {
                std::fs::read_to_string(self.layout().sessions_dir().join(name)).ok()
            })
            .collect()
    }

    fn sessions_dir_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.layout().sessions_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.worker_pids() {
            // Each worker leads its own process group: this takes what it started too.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if let Some(pid) = std::fs::read_to_string(self.layout().manager_pid())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Sandbox {
    /// The client's key pair (made on first use) and the authorized_keys that accepts it.
    pub fn client_key(&self) -> PathBuf {
        let key = self.path().join("id_ed25519");
        if !key.exists() {
            run_quiet(
                Command::new("ssh-keygen")
                    .args([
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "nu-session-test",
                        "-f",
                    ])
                    .arg(&key),
            );
            std::fs::copy(key.with_extension("pub"), self.authorized_keys())
                .expect("authorized_keys");
        }
        key
    }

    /// The keys every test server of this sandbox accepts (readable by their users).
    pub fn authorized_keys(&self) -> PathBuf {
        self.path().join("authorized_keys")
    }

    /// Writes the ssh config the plugin reads (`$env.NU_SESSION_SSH_CONFIG`), trusting `known`.
    pub fn ssh_config(&self, known: &[&crate::Sshd], extra: &str) -> PathBuf {
        let known_hosts = self.path().join("known_hosts");
        let lines: Vec<String> = known.iter().map(|s| s.known_hosts_line()).collect();
        std::fs::write(&known_hosts, lines.join("\n") + "\n").expect("known_hosts");
        let config = self.path().join("ssh_config");
        std::fs::write(
            &config,
            format!(
                "{extra}\nHost *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n",
                self.client_key().display(),
                known_hosts.display()
            ),
        )
        .expect("ssh config");
        config
    }

    /// [`Sandbox::command`] with the ssh config and no ssh-agent.
    pub fn ssh_command(&self, config: &Path, script: &str) -> Command {
        let mut command = self.command(script);
        command
            .env("NU_SESSION_SSH_CONFIG", config)
            .env_remove("SSH_AUTH_SOCK");
        command
    }

    /// Runs a script with the ssh config and no ssh-agent.
    pub fn ssh_run(&self, config: &Path, script: &str) -> Output {
        self.ssh_command(config, script).output().expect("run nu")
    }

    /// Starts a script with the ssh config and no ssh-agent, stdout and stderr piped.
    pub fn ssh_spawn(&self, config: &Path, script: &str) -> Child {
        self.ssh_command(config, script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nu")
    }

    /// Authorizes another public key on every sshd of this sandbox.
    pub fn authorize(&self, public_key: &Path) {
        self.client_key();
        let key = std::fs::read_to_string(public_key).expect("public key");
        let mut keys = std::fs::read_to_string(self.authorized_keys()).unwrap_or_default();
        keys.push_str(&key);
        std::fs::write(self.authorized_keys(), keys).expect("authorized_keys");
    }

    /// Like [`Sandbox::json`], with the ssh config and no ssh-agent.
    pub fn ssh_json(&self, config: &Path, script: &str) -> serde_json::Value {
        let out = self.ssh_run(config, &format!("{script} | to json -r"));
        assert!(
            out.status.success(),
            "script failed: {script}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Runs `code`, which must fail, and returns `shown` (a nu expression of the error `$e`)
    /// with its whitespace collapsed (renderings wrap long lines).
    pub fn ssh_caught(&self, config: &Path, code: &str, shown: &str) -> String {
        let out = self.ssh_json(
            config,
            &format!("try {{ {code}; 'no error' }} catch {{|e| {shown} }}"),
        );
        let text = out
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_ne!(text, "no error", "{code} did not fail");
        text
    }
}
