//! Harness for nu-session's end-to-end tests: real `nu` processes with the built plugin, real
//! host processes, each test in a sandbox of its own.
//!
//! - [`Sandbox`]: a private runtime directory (so tests never see each other's sessions or the
//!   user's), `nu` runs inside it, and on drop every worker and manager it started is killed.
//! - [`nu_binary`], [`bin_dir`]: where the tools under test are.
//!
//! The test command (`scripts/test.sh`) builds the binaries and provides `nu`; run directly,
//! set `NU_SESSION_TEST_NU` to a nu 0.115.x binary.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the built `nu_plugin_session` and `nu-session-host`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NU_SESSION_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    for name in ["nu_plugin_session", "nu-session-host"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing in {}: build the workspace first (scripts/test.sh does)",
            name,
            dir.display()
        );
    }
    dir.to_path_buf()
}

/// The `nu` to test with: `$NU_SESSION_TEST_NU`, else `nu` on PATH.
pub fn nu_binary() -> PathBuf {
    let nu = std::env::var_os("NU_SESSION_TEST_NU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nu"));
    let version = Command::new(&nu).arg("--version").output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).starts_with("0.115.") => nu,
        _ => panic!(
            "no nu 0.115.x at {}: run scripts/test.sh, or set NU_SESSION_TEST_NU",
            nu.display()
        ),
    }
}

pub struct Sandbox {
    dir: tempfile::TempDir,
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

    /// The host's runtime directory for this sandbox.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("rt")
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
            .current_dir(self.dir.path())
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

    /// Every host runtime directory in this sandbox: the local one and those of its sshd hosts.
    fn runtime_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.runtime_dir()];
        if let Ok(entries) = std::fs::read_dir(self.path()) {
            dirs.extend(
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("remote-"))
                    }),
            );
        }
        dirs
    }

    /// Pids of the session workers alive in this sandbox (local and remote hosts).
    pub fn worker_pids(&self) -> Vec<i32> {
        self.runtime_dirs()
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir.join("sessions")).ok())
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

    /// Files left in the sessions directory.
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
                std::fs::read_to_string(self.runtime_dir().join("sessions").join(name)).ok()
            })
            .collect()
    }

    fn sessions_dir_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.runtime_dir().join("sessions"))
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
        for dir in self.runtime_dirs() {
            if let Some(pid) = std::fs::read_to_string(dir.join("manager.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Waits until `condition` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// A real OpenSSH server on a loopback address, for this sandbox. Its sessions run the built
/// `nu-session-host` (on the PATH it sets) with a runtime directory of their own.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    pub address: String,
    pub port: u16,
    /// The server's public host key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// How clients name this server: `user@address:port`.
    pub fn computer(&self, user: &str) -> String {
        format!("{user}@{}:{}", self.address, self.port)
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

    /// The runtime directory the host side of this server uses.
    pub fn remote_runtime_dir(sandbox: &Sandbox, address: &str) -> PathBuf {
        sandbox.path().join(format!("remote-{address}"))
    }

    /// Kills (SIGKILL) the per-connection sshd processes: every client connection drops as if
    /// the server side had crashed; the listener stays. Returns how many were killed.
    pub fn kill_connections(&self) -> usize {
        let children = children_of(self.child.id() as i32);
        for pid in &children {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        children.len()
    }
}

/// The pids whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may contain spaces.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A network namespace joined to this one by a veth pair: a server inside it is reached at
/// [`NetNs::address`], and [`NetNs::cut`] takes the link down (packets go nowhere, as when a
/// network fails) until [`NetNs::restore`]. Removed when dropped. Needs root (CAP_NET_ADMIN).
pub struct NetNs {
    pub name: String,
    veth: String,
    /// The namespace side's address.
    pub address: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let name = format!("nus{tag}");
        let veth = format!("nvh{tag}");
        let inner = format!("nvi{tag}");
        // 10.(200 + pid % 50).(n % 64 * 4): a /30 of our own.
        let net = format!("10.{}.{}", 200 + std::process::id() % 50, (n % 64) * 4);
        let ns = NetNs {
            name: name.clone(),
            veth: veth.clone(),
            address: format!("{net}.2"),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", &inner, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{net}.1/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{net}.2/30"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Takes the link down: nothing gets through.
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Brings the link back.
    pub fn restore(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The number last written to `path` (0 before it exists). Writers such as nu's `save -f`
/// truncate before they write: an empty or partial read is read again.
pub fn read_number(path: &Path) -> i64 {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(n) = text.trim().parse() {
            return n;
        }
        if !path.exists() {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    0
}

/// The ints in a JSON list.
pub fn ints(value: &serde_json::Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_i64().unwrap_or_else(|| panic!("not an int: {v}")))
        .collect()
}

/// `text` as one word for `sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A tmux terminal: read its screen, type into it. Killed when dropped.
pub struct Terminal {
    socket: PathBuf,
}

impl Terminal {
    fn tmux(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    /// What the terminal shows, with its scrollback, lines joined where they wrapped.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text` (at least `times` times); returns the screen.
    pub fn wait_for_n(&self, text: &str, times: usize, timeout: Duration) -> String {
        let mut screen = String::new();
        let found = eventually(timeout, || {
            screen = self.screen();
            screen.matches(text).count() >= times
        });
        assert!(
            found,
            "the terminal never showed {text:?} {times}×:\n{screen}"
        );
        screen
    }

    pub fn wait_for(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_n(text, 1, timeout)
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        run_quiet(self.tmux().args(["send-keys", "-t", "t", "-l", text]));
    }

    /// Presses keys by tmux name (`Enter`, `C-c`, `C-d`).
    pub fn press(&self, key: &str) {
        run_quiet(self.tmux().args(["send-keys", "-t", "t", key]));
    }

    /// Types a line and presses Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.press("Enter");
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

fn run_quiet(command: &mut Command) {
    let out = command.output().expect("run a setup command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
            std::fs::copy(
                key.with_extension("pub"),
                self.path().join("authorized_keys"),
            )
            .expect("authorized_keys");
        }
        key
    }

    /// Starts `sshd` on `address` (e.g. 127.0.0.2) with a fresh host key.
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
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let port = match netns {
            Some(_) => 22,
            None => {
                let listener = std::net::TcpListener::bind((address, 0)).expect("free port");
                listener.local_addr().expect("port").port()
            }
        };
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir().display());
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "{extra}\nListenAddress {address}\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\nSetEnv PATH={path} NU_SESSION_DIR={}\n",
                host_key.display(),
                self.path().join("authorized_keys").display(),
                Sshd::remote_runtime_dir(self, address).display(),
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
        }
    }

    /// Writes the ssh config the plugin reads (`$env.NU_SESSION_SSH_CONFIG`), trusting `known`.
    pub fn ssh_config(&self, known: &[&Sshd], extra: &str) -> PathBuf {
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
        let mut keys =
            std::fs::read_to_string(self.path().join("authorized_keys")).unwrap_or_default();
        keys.push_str(&key);
        std::fs::write(self.path().join("authorized_keys"), keys).expect("authorized_keys");
    }

    /// A real terminal (tmux, 200×50) running `nu` with the plugin and `script`, with the ssh
    /// config when given. The pane stays after nu exits, showing `[exited N]`.
    pub fn terminal(&self, config: Option<&Path>, script: Option<&str>) -> Terminal {
        let mut line = format!(
            "{} -n --no-std-lib --plugins {}",
            shell_quote(&nu_binary().display().to_string()),
            shell_quote(&format!(
                "[{}]",
                bin_dir().join("nu_plugin_session").display()
            )),
        );
        if let Some(script) = script {
            line.push_str(&format!(" -c {}", shell_quote(script)));
        }
        let socket = self.path().join("tmux.sock");
        let mut command = Command::new("tmux");
        command
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                "-s",
                "t",
            ])
            .arg(format!("{line}; echo \"[exited $?]\"; sleep 600"))
            .env("NU_SESSION_DIR", self.runtime_dir())
            .env("NU_SESSION_HOST", bin_dir().join("nu-session-host"))
            .env("TERM", "xterm-256color")
            // Histories (enter-session's) stay in the sandbox.
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.dir.path());
        if let Some(config) = config {
            command.env("NU_SESSION_SSH_CONFIG", config);
        }
        run_quiet(&mut command);
        Terminal { socket }
    }

    /// Runs a script with the ssh config as [`Sandbox::ssh_run`] does, but with a terminal
    /// (a pseudo-terminal from `script`) as its stdin, stdout and stderr. Returns what the
    /// terminal showed.
    pub fn pty_run(&self, config: &Path, script: &str) -> String {
        let quote = |s: &str| shell_quote(s);
        let line = format!(
            "{} -n --no-std-lib --plugins {} -c {}",
            quote(&nu_binary().display().to_string()),
            quote(&format!(
                "[{}]",
                bin_dir().join("nu_plugin_session").display()
            )),
            quote(script)
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("NU_SESSION_DIR", self.runtime_dir())
            .env("NU_SESSION_HOST", bin_dir().join("nu-session-host"))
            .env("NU_SESSION_SSH_CONFIG", config)
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run script(1)");
        String::from_utf8_lossy(&out.stdout).into_owned()
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
}
