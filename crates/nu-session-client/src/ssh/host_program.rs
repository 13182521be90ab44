//! The host program on a remote computer: a `nu-session-host` of this client's version, found
//! there or copied there.
//!
//! **Finding it** is one command, [`start`]: a line of POSIX `sh` (no `'`, no `!`, no newline,
//! so that any login shell — bash, zsh, fish, csh, nu — passes it on unchanged) that runs
//! `nu-session-host <args>` if the host has one of this client's version, and otherwise prints
//! what the host is (`uname -s`, `uname -m`, the tools a copy needs) after a marker. Where it
//! looks: first the copy a client of this very build put there (`<data dir>/host/<version>-
//! <digest>/nu-session-host`, `<data dir>` being `${XDG_DATA_HOME:-~/.local/share}/nu-session`),
//! then a `nu-session-host` on the PATH of non-interactive commands whose `--version` is this
//! client's ([`nu_session_protocol::version_line`]).
//!
//! **Copying it** ([`deploy`]), only when the host's OS and architecture are this program's and
//! copying is not turned off: another command receives our host program on its stdin (gzip'd
//! when the host has `gzip`: compressed once per build on this machine, kept in the cache,
//! it is a third of the size) into a temporary file next to its final place, checks its size,
//! its SHA-256 (`sha256sum` or `shasum`) and that it runs and prints this version, and only then
//! renames it into place — atomically, so two clients copying at once end with one good copy,
//! and a cut upload is never run. Earlier builds of the same version there are removed.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use russh::ChannelMsg;
use russh::client::Msg;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::ClientError;
use nu_session_protocol::{RELAY_PREAMBLE, SOFTWARE_VERSION, version_line};

use super::connection::SshConnection;

/// Printed by the finding command before what the host is, when it has no host program.
const PROBE_MARKER: &str = "nu-session-probe:";
/// Printed by the copying command when the copy is in place.
const COPIED: &str = "nu-session-upload-ok";
/// How much of the program is read, compressed and sent at a time.
const CHUNK: usize = 256 * 1024;
/// What a login shell may print before our command's output, at most.
const MAX_NOISE: usize = 64 * 1024;

/// The environment variable that turns copying off (`never`, `off`, `no`, `false` or `0`).
pub const DEPLOY_ENV: &str = "NU_SESSION_DEPLOY";

/// Whether and how to copy this client's host program to hosts that lack one.
#[derive(Clone)]
pub struct Deploy {
    pub enabled: bool,
    /// Told how a copy goes.
    pub progress: Option<Progress>,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            enabled: true,
            progress: None,
        }
    }
}

impl std::fmt::Debug for Deploy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploy")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Deploy {
    /// Whether a `NU_SESSION_DEPLOY` value allows copying (anything but the words for no).
    pub fn allowed_by(value: Option<&str>) -> bool {
        !value.is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "never" | "off" | "no" | "false" | "0"
            )
        })
    }
}

/// Told as a copy to `computer_name` goes: `sent` of `total` bytes of the program so far.
pub type Progress = Arc<dyn Fn(&DeployProgress) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct DeployProgress {
    pub computer_name: String,
    pub sent: u64,
    pub total: u64,
    pub done: bool,
}

/// What the finding command found.
pub(crate) enum Found {
    /// The host program runs `connect`: the protocol follows.
    Relay(russh::ChannelStream<Msg>),
    /// There is none of this version; what the host is.
    Missing(Probe),
}

/// What a host without our host program is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// `uname -s`, `uname -m`.
    pub os: String,
    pub arch: String,
    pub gzip: bool,
    /// `sha256sum`, `shasum`, or `none`.
    pub digest_tool: String,
}

impl Probe {
    fn parse(line: &str) -> Option<Probe> {
        let mut words = line.split_whitespace();
        Some(Probe {
            os: words.next()?.to_string(),
            arch: words.next()?.to_string(),
            gzip: words.next()? == "gzip",
            digest_tool: words.next()?.to_string(),
        })
    }
}

/// This client's host program, once per process: where it is, how big, its digest.
struct LocalProgram {
    path: PathBuf,
    size: u64,
    sha256: String,
}

impl LocalProgram {
    /// The directory (under the host's data dir) a copy of this build lives in.
    fn dir_name(&self) -> String {
        format!("{SOFTWARE_VERSION}-{}", &self.sha256[..16])
    }
}

static LOCAL: OnceLock<Result<LocalProgram, String>> = OnceLock::new();

fn local_program() -> Result<&'static LocalProgram, ClientError> {
    LOCAL
        .get_or_init(find_local_program)
        .as_ref()
        .map_err(|why| {
            ClientError::transport("there is no nu-session-host here to copy", why)
                .with_help("set NU_SESSION_HOST to this version's nu-session-host, or install it on the remote computer (see docs/setup-remote.md)")
        })
}

fn find_local_program() -> Result<LocalProgram, String> {
    let path = crate::transport::host_program().ok_or(
        "none next to this plugin, none on PATH, and NU_SESSION_HOST is not set".to_string(),
    )?;
    let shown = path.display().to_string();
    let out = std::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if said != version_line() {
        return Err(format!(
            "{shown} is `{said}`, not `{}` like this client",
            version_line()
        ));
    }
    let mut file = std::fs::File::open(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(LocalProgram { path, size, sha256 })
}

/// `sh -c '<script>'`, the script one line without `'` or `!`.
fn sh(script: &str) -> String {
    debug_assert!(!script.contains(['\'', '!', '\n']), "{script}");
    format!("sh -c '{script}'")
}

/// The host's data directory for nu-session, as the remote shell expands it.
const DATA_DIR: &str = "${XDG_DATA_HOME:-$HOME/.local/share}/nu-session";

/// The command that runs `nu-session-host <args>` of this version on the host, or says what
/// the host is.
fn finding_command(args: &str, local: Option<&LocalProgram>) -> String {
    let mut script = String::new();
    if let Some(local) = local {
        script.push_str(&format!(
            "h=\"{DATA_DIR}/host/{}/nu-session-host\"; if [ -x \"$h\" ]; then exec \"$h\" {args}; fi; ",
            local.dir_name()
        ));
    }
    script.push_str(&format!(
        "if [ \"$(nu-session-host --version 2>/dev/null)\" = \"{}\" ]; then exec nu-session-host {args}; fi; \
         z=none; if command -v gzip >/dev/null 2>&1; then z=gzip; fi; \
         s=none; if command -v sha256sum >/dev/null 2>&1; then s=sha256sum; elif command -v shasum >/dev/null 2>&1; then s=shasum; fi; \
         echo \"{PROBE_MARKER} $(uname -s) $(uname -m) $z $s\"",
        version_line()
    ));
    sh(&script)
}

/// Runs this version's `nu-session-host <args>` on the host, or finds out what the host is.
pub(crate) async fn start(connection: &SshConnection, args: &str) -> Result<Found, ClientError> {
    // Without a local program there is nothing to copy, but one on the remote PATH may do.
    let local = local_program().ok();
    let channel = connection.exec(&finding_command(args, local)).await?;
    let mut stream = channel.into_stream();
    let name = &connection.target().computer_name;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if seen.ends_with(RELAY_PREAMBLE) {
            return Ok(Found::Relay(stream));
        }
        if seen.ends_with(b"\n")
            && let Some(line) = last_line(&seen).strip_prefix(PROBE_MARKER)
        {
            return match Probe::parse(line) {
                Some(probe) => Ok(Found::Missing(probe)),
                None => Err(did_not_start(name, &seen)),
            };
        }
        if seen.len() > MAX_NOISE {
            return Err(ClientError::transport(
                &format!("{name} printed too much before nu-session-host started"),
                "more than 64 KiB of login output",
            ));
        }
        match stream.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => return Err(did_not_start(name, &seen)),
        }
    }
}

/// The last complete line of `bytes` (which end with a newline).
fn last_line(bytes: &[u8]) -> String {
    let body = &bytes[..bytes.len().saturating_sub(1)];
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&body[start..]).into_owned()
}

fn did_not_start(name: &str, said: &[u8]) -> ClientError {
    let said = crate::text::printable(String::from_utf8_lossy(said).trim()).into_owned();
    // The host program ran and said why it could not go on.
    if let Some(why) = said
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(nu_session_protocol::RELAY_FAILED))
    {
        return ClientError::transport(&format!("nu-session-host on {name} failed"), why);
    }
    ClientError::transport(
        &format!("nu-session-host did not start on {name}"),
        if said.is_empty() {
            "no output".into()
        } else {
            said
        },
    )
    .with_help(format!(
        "check that {name} runs a POSIX sh for ssh commands; or install nu-session-host {SOFTWARE_VERSION} there on the PATH of non-interactive ssh commands (see docs/setup-remote.md)"
    ))
}

/// The names `std::env::consts` gives for what `uname -s` and `uname -m` print.
fn local_names(os: &str, arch: &str) -> (String, String) {
    let os = match os {
        "Linux" => "linux",
        "Darwin" => "macos",
        "FreeBSD" => "freebsd",
        "NetBSD" => "netbsd",
        "OpenBSD" => "openbsd",
        other => other,
    };
    let arch = match arch {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        a if a.starts_with("armv") => "arm",
        other => other,
    };
    (os.to_string(), arch.to_string())
}

/// Copies this client's host program to the host described by `probe`.
pub(crate) async fn deploy(
    connection: &SshConnection,
    probe: &Probe,
    deploy: &Deploy,
) -> Result<(), ClientError> {
    let name = connection.target().computer_name.clone();
    let install_help = |why: &str| {
        format!(
            "{why}install nu-session-host {SOFTWARE_VERSION} on {name} (cargo install --locked --path crates/nu-session-host from the nu-session sources, on {name}) and put it on the PATH of non-interactive ssh commands; see docs/setup-remote.md"
        )
    };
    if !deploy.enabled {
        return Err(ClientError::transport(
            &format!("nu-session-host {SOFTWARE_VERSION} is not on {name}"),
            format!("copying it there is turned off ({DEPLOY_ENV}=never)"),
        )
        .with_help(install_help("")));
    }
    let (os, arch) = local_names(&probe.os, &probe.arch);
    if os != std::env::consts::OS || arch != std::env::consts::ARCH {
        return Err(ClientError::transport(
            &format!(
                "nu-session-host {SOFTWARE_VERSION} is not on {name}, and ours cannot run there"
            ),
            format!(
                "{name} is {} {}, this nu-session-host is built for {} {}",
                probe.os,
                probe.arch,
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        )
        .with_help(install_help(&format!(
            "build it for {} {} and ",
            probe.os, probe.arch
        ))));
    }
    let local = local_program()?;
    let failed = |why: String| {
        ClientError::transport(&format!("cannot copy nu-session-host to {name}"), why).with_help(
            install_help("try again (the next session copies it again), or "),
        )
    };
    let file = match probe.gzip {
        true => compressed(local).await?,
        false => local.path.clone(),
    };
    let total = std::fs::metadata(&file).map_or(local.size, |m| m.len());
    let channel = connection.exec(&copying_command(local, probe)).await?;
    let watchdog = Watchdog::default();
    let report = |sent: u64, done: bool| {
        watchdog.made();
        if let Some(progress) = &deploy.progress {
            progress(&DeployProgress {
                computer_name: name.clone(),
                sent,
                total,
                done,
            });
        }
    };
    // What the host says is read while the program is sent: an unread channel can stall the
    // whole connection.
    let (mut incoming, outgoing) = channel.split();
    // A command that ends before it has the whole program failed (it says why on stderr):
    // sending stops there, it would wait forever for room.
    let copy = async {
        let send = send_file(&outgoing, &file, &report);
        let ended = outcome(&mut incoming);
        tokio::pin!(send, ended);
        tokio::select! {
            sent = &mut send => (sent, ended.await),
            ended = &mut ended => (Err("the copying command ended early".to_string()), ended),
        }
    };
    let (sent, (status, stdout, stderr)) = tokio::select! {
        done = copy => done,
        why = watchdog.stalled(connection) => (Err(why), (None, Vec::new(), Vec::new())),
    };
    report(total, true);
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    match (status, sent) {
        (Some(0), Ok(())) if said(&stdout).ends_with(COPIED) => Ok(()),
        (_, Err(e)) if stderr.is_empty() => Err(failed(format!("the upload broke off: {e}"))),
        (status, _) => Err(failed(match said(&stderr) {
            s if s.is_empty() => format!(
                "the copying command ended with {}",
                status.map_or("no status".to_string(), |s| format!("status {s}"))
            ),
            s => s,
        })),
    }
}

/// The command that receives the program on stdin and puts it in place if it is whole.
fn copying_command(local: &LocalProgram, probe: &Probe) -> String {
    let decode = if probe.gzip { "gzip -dc" } else { "cat" };
    let check_digest = match probe.digest_tool.as_str() {
        tool @ ("sha256sum" | "shasum") => {
            let tool = if tool == "shasum" {
                "shasum -a 256"
            } else {
                tool
            };
            format!(
                "s=$({tool} \"$t\" | cut -d\" \" -f1); [ \"$s\" = {digest} ] || {{ echo \"the copy is damaged (its SHA-256 is $s, not {digest})\" >&2; exit 4; }}; ",
                digest = local.sha256
            )
        }
        // Size, and the program running and naming this version, are the checks left.
        _ => String::new(),
    };
    sh(&format!(
        "set -e; d=\"{DATA_DIR}/host\"; v={dir}; mkdir -p \"$d/$v\"; t=\"$d/$v/.upload-$$\"; trap \"rm -f \\\"$t\\\"\" EXIT; \
         {decode} > \"$t\"; n=$(wc -c < \"$t\" | tr -d \" \"); \
         [ \"$n\" = {size} ] || {{ echo \"the copy is incomplete ($n of {size} bytes)\" >&2; exit 3; }}; \
         {check_digest}chmod 755 \"$t\"; \
         r=$(\"$t\" --version 2>&1) || {{ echo \"the copied program does not run there: $r\" >&2; exit 5; }}; \
         [ \"$r\" = \"{line}\" ] || {{ echo \"the copied program says $r\" >&2; exit 6; }}; \
         mv -f \"$t\" \"$d/$v/nu-session-host\"; trap - EXIT; \
         for o in \"$d\"/{version}-*; do case \"$o\" in \"$d/$v\") ;; *) rm -rf \"$o\";; esac; done; \
         echo {COPIED}",
        dir = local.dir_name(),
        size = local.size,
        line = version_line(),
        version = SOFTWARE_VERSION,
    ))
}

/// How long a copy may make no progress before it is given up.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// When a copy last made progress.
struct Watchdog {
    last: std::sync::Mutex<std::time::Instant>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            last: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }
}

impl Watchdog {
    fn made(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    /// Returns (why) once the connection has closed or nothing moved for [`STALLED_AFTER`].
    async fn stalled(&self, connection: &SshConnection) -> String {
        loop {
            if connection.is_closed() {
                return "the connection closed".into();
            }
            let idle = self
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if idle >= STALLED_AFTER {
                return format!("no progress for {}s", STALLED_AFTER.as_secs());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Streams `file` into the channel, then closes its stdin.
async fn send_file(
    channel: &russh::ChannelWriteHalf<Msg>,
    file: &std::path::Path,
    report: &impl Fn(u64, bool),
) -> Result<(), String> {
    let mut file = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        channel
            .data_bytes(buf[..n].to_vec())
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
        report(sent, false);
    }
    channel.eof().await.map_err(|e| e.to_string())
}

/// The program gzip'd, made once per build on this machine and kept in the cache
/// (`${XDG_CACHE_HOME:-~/.cache}/nu-session/host-<version>-<digest>.gz`), so that copying to a
/// whole fleet compresses it once. Put in place atomically: a file there is whole.
async fn compressed(local: &'static LocalProgram) -> Result<PathBuf, ClientError> {
    static MADE: tokio::sync::OnceCell<Result<PathBuf, String>> =
        tokio::sync::OnceCell::const_new();
    MADE.get_or_init(|| async {
        tokio::task::spawn_blocking(move || compress(local))
            .await
            .map_err(|e| e.to_string())
            .and_then(|made| made)
    })
    .await
    .clone()
    .map_err(|why| ClientError::transport("cannot compress nu-session-host for copying", why))
}

fn compress(local: &LocalProgram) -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?
        .join("nu-session");
    let path = cache.join(format!("host-{}.gz", local.dir_name()));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let partial = cache.join(format!(
        ".host-{}.gz.{}",
        local.dir_name(),
        std::process::id()
    ));
    let made = (|| -> std::io::Result<()> {
        let mut source = std::fs::File::open(&local.path)?;
        let mut encoder = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(std::fs::File::create(&partial)?),
            flate2::Compression::fast(),
        );
        std::io::copy(&mut source, &mut encoder)?;
        std::io::Write::flush(&mut encoder.finish()?)?;
        std::fs::rename(&partial, &path)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("{}: {e}", path.display()));
    }
    // Earlier builds of this version are of no more use.
    let earlier = format!("host-{SOFTWARE_VERSION}-");
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&earlier) && entry.path() != path {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(path)
}

/// The command's exit status and output, once it has ended.
async fn outcome(channel: &mut russh::ChannelReadHalf) -> (Option<u32>, Vec<u8>, Vec<u8>) {
    let (mut status, mut stdout, mut stderr) = (None, Vec::new(), Vec::new());
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    (status, stdout, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program() -> LocalProgram {
        LocalProgram {
            path: PathBuf::from("/x"),
            size: 1234,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn commands_survive_any_login_shell() {
        let probe = Probe {
            os: "Linux".into(),
            arch: "x86_64".into(),
            gzip: true,
            digest_tool: "sha256sum".into(),
        };
        for command in [
            finding_command("connect", Some(&program())),
            finding_command("connect --session 1", None),
            copying_command(&program(), &probe),
        ] {
            let script = command
                .strip_prefix("sh -c '")
                .and_then(|s| s.strip_suffix('\''))
                .unwrap_or_else(|| panic!("not sh -c '...': {command}"));
            assert!(!script.contains(['\'', '!', '\n']), "{script}");
        }
    }

    #[test]
    fn the_finding_command_looks_for_this_build_then_this_version() {
        let command = finding_command("connect", Some(&program()));
        let own = command.find(&program().dir_name()).unwrap();
        let on_path = command.find(&version_line()).unwrap();
        assert!(own < on_path, "{command}");
        assert!(command.contains("exec \"$h\" connect"), "{command}");
    }

    #[test]
    fn probes_read_what_uname_prints() {
        assert_eq!(
            Probe::parse(" Linux aarch64 none shasum\n"),
            Some(Probe {
                os: "Linux".into(),
                arch: "aarch64".into(),
                gzip: false,
                digest_tool: "shasum".into()
            })
        );
        assert_eq!(Probe::parse("Linux"), None);
        assert_eq!(
            local_names("Darwin", "arm64"),
            ("macos".into(), "aarch64".into())
        );
        assert_eq!(
            local_names("Linux", "x86_64"),
            ("linux".into(), "x86_64".into())
        );
    }

    #[test]
    fn deploying_is_off_only_when_said_so() {
        assert!(Deploy::allowed_by(None));
        assert!(Deploy::allowed_by(Some("auto")));
        for no in ["never", "OFF", "no", "false", "0"] {
            assert!(!Deploy::allowed_by(Some(no)), "{no}");
        }
    }
}
