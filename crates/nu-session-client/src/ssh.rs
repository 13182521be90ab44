//! The SSH transport: one russh connection per (user, host, port), a channel per host
//! connection, each running `nu-session-host connect` on the remote.
//!
//! - Configuration comes from OpenSSH itself (`ssh -G`), so `Host` aliases, `HostName`, `User`,
//!   `Port`, `IdentityFile`, `UserKnownHostsFile`, `StrictHostKeyChecking` and `ConnectTimeout`
//!   mean exactly what they mean to `ssh`. Flags (user, port, identity file) override the config.
//! - Host keys are checked against every `UserKnownHostsFile`: a changed key is refused naming the
//!   file and line; an unknown key follows `StrictHostKeyChecking` (`yes`/`ask` refuse with how to
//!   accept it, `accept-new` learns it, `no` accepts it).
//! - `ProxyJump` hops are connected in order, each tunnelled through the one before
//!   (`direct-tcpip`), and each verified and authenticated like a direct host.
//! - Authentication: the ssh-agent first, then identity files (unencrypted, or encrypted ones held
//!   by the agent). Nothing secret is ever taken from arguments or logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::MethodKind;
use russh::client::{self, AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{self, PrivateKeyWithHashAlg, PublicKey};
use tokio::io::AsyncReadExt;

use crate::ClientError;
use crate::computer::ComputerName;

/// Asks the user for a secret (a key's passphrase, a password) on their terminal. `None`: there
/// is no terminal, or the user gave up. Secrets are never taken from arguments and never logged.
#[derive(Clone)]
pub struct Prompter(Arc<Ask>);

type Ask = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Prompter {
    pub fn new(ask: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Prompter(Arc::new(ask))
    }

    /// Asks without blocking the I/O runtime.
    async fn ask(&self, prompt: String) -> Option<String> {
        let ask = self.0.clone();
        tokio::task::spawn_blocking(move || ask(&prompt))
            .await
            .ok()
            .flatten()
    }
}

impl std::fmt::Debug for Prompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prompter")
    }
}

/// How many times a passphrase or password is asked for before giving up, as OpenSSH.
const TRIES: usize = 3;

/// What to do with a host key that no known_hosts file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// Refuse (OpenSSH `yes`, and `ask`: there is nobody to ask).
    Yes,
    /// Learn it into the first known_hosts file and go on.
    AcceptNew,
    /// Accept it without learning.
    No,
}

impl StrictHostKeyChecking {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "yes" | "ask" | "true" => Some(Self::Yes),
            "accept-new" => Some(Self::AcceptNew),
            "no" | "off" | "false" => Some(Self::No),
            _ => None,
        }
    }
}

/// Everything needed to reach one host, resolved from the computer name, flags and ssh config.
#[derive(Debug, Clone, PartialEq)]
pub struct SshTarget {
    /// As the user typed it (shown in records).
    pub computer_name: String,
    /// The address to connect to (`HostName`).
    pub hostname: String,
    pub user: String,
    pub port: u16,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts: Vec<PathBuf>,
    pub strict: StrictHostKeyChecking,
    pub connect_timeout: Option<Duration>,
    /// `ProxyJump` hops, first to last (`user@host:port` or config aliases).
    pub proxy_jump: Vec<String>,
    /// The ssh config file the target was resolved with, for resolving the hops the same way.
    pub config_file: Option<PathBuf>,
    /// Keepalives (`ServerAliveInterval`, `ServerAliveCountMax`): a connection that answers
    /// none of `alive_count_max` in a row is considered broken. OpenSSH's default interval is 0
    /// (off); ours is [`DEFAULT_ALIVE_INTERVAL`], since a session must notice a dead network.
    pub alive_interval: Duration,
    pub alive_count_max: usize,
}

/// The keepalive interval when the ssh config sets none.
pub const DEFAULT_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Overrides given on the command line; they win over the ssh config.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub strict: Option<StrictHostKeyChecking>,
    /// An ssh config file to use instead of `~/.ssh/config` (`ssh -F`).
    pub config_file: Option<PathBuf>,
    /// Asks for passphrases and passwords when a terminal is attached.
    pub prompter: Option<Prompter>,
}

impl SshTarget {
    /// Resolves `name` as `ssh` would (`ssh -G`), with `options` taking precedence.
    pub fn resolve(name: &ComputerName, options: &SshOptions) -> Result<SshTarget, ClientError> {
        let mut command = std::process::Command::new("ssh");
        command.arg("-G");
        if let Some(file) = &options.config_file {
            command.arg("-F").arg(file);
        }
        if let Some(port) = options.port.or(name.port) {
            command.arg("-p").arg(port.to_string());
        }
        if let Some(user) = options.user.as_ref().or(name.user.as_ref()) {
            command.arg("-l").arg(user);
        }
        // `--` ends options: the host can never be read as one (it is validated too).
        command.arg("--").arg(&name.host);
        let output = command
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                ClientError::transport("cannot run `ssh -G` to read the ssh configuration", e)
                    .with_help("install the OpenSSH client (`ssh`)")
            })?;
        if !output.status.success() {
            return Err(ClientError::transport(
                &format!("`ssh -G {}` failed", name.host),
                String::from_utf8_lossy(&output.stderr).trim(),
            ));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut target = SshTarget::from_ssh_g(&name.to_string(), &text)?;
        target.config_file = options.config_file.clone();
        if let Some(file) = &options.identity_file {
            target.identity_files = vec![file.clone()];
        }
        if let Some(timeout) = options.connect_timeout {
            target.connect_timeout = Some(timeout);
        }
        if let Some(strict) = options.strict {
            target.strict = strict;
        }
        Ok(target)
    }

    /// Reads the flat `key value` lines `ssh -G` prints.
    fn from_ssh_g(computer_name: &str, text: &str) -> Result<SshTarget, ClientError> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let expand = |path: &str| match path.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => PathBuf::from(path),
        };
        let mut target = SshTarget {
            computer_name: computer_name.to_string(),
            hostname: String::new(),
            user: String::new(),
            port: 22,
            identity_files: Vec::new(),
            known_hosts: Vec::new(),
            strict: StrictHostKeyChecking::Yes,
            connect_timeout: None,
            proxy_jump: Vec::new(),
            config_file: None,
            alive_interval: DEFAULT_ALIVE_INTERVAL,
            alive_count_max: 3,
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            match key {
                "hostname" => target.hostname = value.to_string(),
                "user" => target.user = value.to_string(),
                "port" => target.port = value.parse().unwrap_or(22),
                "identityfile" => target.identity_files.push(expand(value)),
                "userknownhostsfile" => {
                    target.known_hosts = value.split_whitespace().map(expand).collect();
                }
                "stricthostkeychecking" => {
                    target.strict =
                        StrictHostKeyChecking::parse(value).unwrap_or(StrictHostKeyChecking::Yes);
                }
                "connecttimeout" => {
                    target.connect_timeout = value.parse().ok().map(Duration::from_secs);
                }
                "serveraliveinterval" => {
                    if let Some(secs) = value.parse::<u64>().ok().filter(|s| *s > 0) {
                        target.alive_interval = Duration::from_secs(secs);
                    }
                }
                "serveralivecountmax" => {
                    if let Some(count) = value.parse::<usize>().ok().filter(|c| *c > 0) {
                        target.alive_count_max = count;
                    }
                }
                "proxyjump" if value != "none" => {
                    target.proxy_jump = value.split(',').map(str::to_string).collect();
                }
                "proxycommand" if value != "none" => {
                    return Err(ClientError::transport(
                        &format!("{computer_name} is configured with a ProxyCommand"),
                        "nu-session does not run ProxyCommand",
                    )
                    .with_help("use ProxyJump for jump hosts"));
                }
                _ => {}
            }
        }
        if target.hostname.is_empty() || target.user.is_empty() {
            return Err(ClientError::transport(
                "`ssh -G` gave no host name or user",
                computer_name,
            ));
        }
        Ok(target)
    }
}

/// Decides on the server's host key.
struct Verifier {
    target: SshTarget,
    refusal: Arc<Mutex<Option<ClientError>>>,
}

impl Verifier {
    fn refuse(&self, error: ClientError) -> bool {
        if let Ok(mut refusal) = self.refusal.lock() {
            *refusal = Some(error);
        }
        false
    }

    fn check(&self, key: &PublicKey) -> bool {
        let (host, port) = (&self.target.hostname, self.target.port);
        for file in self.target.known_hosts.iter().filter(|f| f.exists()) {
            match keys::check_known_hosts_path(host, port, key, file) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(keys::Error::KeyChanged { line }) => {
                    return self.refuse(
                        ClientError::transport(
                            &format!(
                                "the host key of {} has CHANGED: refusing to connect",
                                self.target.computer_name
                            ),
                            format!(
                                "it does not match {}:{line} (this may be an attack, or the host was reinstalled)",
                                file.display()
                            ),
                        )
                        .with_help(format!(
                            "check the new key with the host's administrator, then remove the old one: ssh-keygen -R {} -f {}",
                            known_hosts_name(host, port),
                            file.display()
                        )),
                    );
                }
                Err(e) => {
                    return self.refuse(ClientError::transport(
                        &format!("cannot read {}", file.display()),
                        e,
                    ));
                }
            }
        }
        match self.target.strict {
            StrictHostKeyChecking::No => true,
            StrictHostKeyChecking::AcceptNew => {
                let file = self.target.known_hosts.first().cloned().unwrap_or_default();
                match keys::known_hosts::learn_known_hosts_path(host, port, key, &file) {
                    Ok(()) => true,
                    Err(e) => self.refuse(ClientError::transport(
                        &format!("cannot record the host key in {}", file.display()),
                        e,
                    )),
                }
            }
            StrictHostKeyChecking::Yes => self.refuse(
                ClientError::transport(
                    &format!("the host key of {} is unknown", self.target.computer_name),
                    format!(
                        "no known_hosts file ({}) has a key for {}",
                        self.target
                            .known_hosts
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        known_hosts_name(host, port)
                    ),
                )
                .with_help(format!(
                    "connect once with `ssh {}` to check and accept the key, or set StrictHostKeyChecking accept-new for this host in ~/.ssh/config (or pass --strict-host-key-checking accept-new)",
                    self.target.computer_name
                )),
            ),
        }
    }
}

fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            keys::PublicKeyOrCertificate::PublicKey { key, .. } => Ok(self.check(key)),
            keys::PublicKeyOrCertificate::Certificate(_) => Ok(self.refuse(
                ClientError::transport("host certificates are not supported", "refusing"),
            )),
        }
    }
}

/// One authenticated SSH connection, shared by every channel to its host.
pub struct SshConnection {
    target: SshTarget,
    handle: Handle<Verifier>,
    /// The jump host this connection is tunnelled through (`ProxyJump`), kept open with it.
    _via: Option<Arc<SshConnection>>,
}

/// The last hop of `target.proxy_jump`, resolved, with the hops before it as its own jumps.
fn last_hop(target: &SshTarget) -> Result<Option<SshTarget>, ClientError> {
    let Some((last, before)) = target.proxy_jump.split_last() else {
        return Ok(None);
    };
    let spec = last.strip_prefix("ssh://").unwrap_or(last);
    let name = ComputerName::parse(spec).map_err(|e| {
        ClientError::transport(
            &format!("bad ProxyJump for {}", target.computer_name),
            format!("{}: {}", e.what, e.reason),
        )
    })?;
    let options = SshOptions {
        config_file: target.config_file.clone(),
        strict: Some(target.strict),
        connect_timeout: target.connect_timeout,
        ..Default::default()
    };
    let mut hop = SshTarget::resolve(&name, &options)?;
    // The hops of the chain are the ones the target names, not the jump host's own.
    hop.proxy_jump = before.to_vec();
    Ok(Some(hop))
}

impl SshConnection {
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Connects, verifies the host key, and authenticates (asking `prompter` for passphrases
    /// and passwords when the keys are not enough).
    pub async fn connect(
        target: SshTarget,
        prompter: Option<Prompter>,
    ) -> Result<SshConnection, ClientError> {
        let config = Arc::new(client::Config {
            keepalive_interval: Some(target.alive_interval),
            keepalive_max: target.alive_count_max,
            nodelay: true,
            ..Default::default()
        });
        let refusal = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            target: target.clone(),
            refusal: refusal.clone(),
        };
        let timeout = target.connect_timeout.unwrap_or(Duration::from_secs(30));
        let name = &target.computer_name;
        let via = match last_hop(&target)? {
            None => None,
            Some(hop) => Some(Arc::new(
                Box::pin(SshConnection::connect(hop, prompter.clone())).await?,
            )),
        };
        let connecting = async {
            match &via {
                None => {
                    let address = (target.hostname.clone(), target.port);
                    client::connect(config, address, verifier).await
                }
                Some(via) => {
                    let channel = via
                        .handle
                        .channel_open_direct_tcpip(
                            target.hostname.clone(),
                            u32::from(target.port),
                            "127.0.0.1",
                            0,
                        )
                        .await?;
                    client::connect_stream(config, channel.into_stream(), verifier).await
                }
            }
        };
        let mut handle = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => {
                return Err(ClientError::transport(
                    &format!("cannot connect to {name}"),
                    format!("no answer within {}s", timeout.as_secs()),
                )
                .with_help("check the host name and port, or raise --connect-timeout"));
            }
            Ok(Err(e)) => {
                if let Some(refusal) = refusal.lock().ok().and_then(|mut r| r.take()) {
                    return Err(refusal);
                }
                let through = via
                    .as_ref()
                    .map(|v| format!(" through {}", v.target.computer_name))
                    .unwrap_or_default();
                return Err(ClientError::transport(
                    &format!("cannot connect to {name}{through}"),
                    e,
                ));
            }
            Ok(Ok(handle)) => handle,
        };
        authenticate(&mut handle, &target, prompter.as_ref()).await?;
        Ok(SshConnection {
            target,
            handle,
            _via: via,
        })
    }

    /// Opens the Unix socket at `path` on the host (`direct-streamlocal@openssh.com`).
    pub async fn open_socket(
        &self,
        path: &str,
    ) -> Result<russh::ChannelStream<client::Msg>, russh::Error> {
        let channel = self.handle.channel_open_direct_streamlocal(path).await?;
        Ok(channel.into_stream())
    }

    /// Runs `command` on the host in a new channel and returns its stdin/stdout as a stream,
    /// positioned after `preamble` (skipping whatever a login shell printed first).
    pub async fn exec(
        &self,
        command: &str,
        preamble: &[u8],
    ) -> Result<russh::ChannelStream<client::Msg>, ClientError> {
        let name = &self.target.computer_name;
        let channel =
            self.handle.channel_open_session().await.map_err(|e| {
                ClientError::transport(&format!("cannot open a channel to {name}"), e)
            })?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| ClientError::transport(&format!("cannot run a command on {name}"), e))?;
        let mut stream = channel.into_stream();
        skip_to(&mut stream, preamble, name).await?;
        Ok(stream)
    }
}

/// Reads until `marker`; what came before is the remote's noise (or its error message).
async fn skip_to(
    stream: &mut russh::ChannelStream<client::Msg>,
    marker: &[u8],
    name: &str,
) -> Result<(), ClientError> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(marker) {
        match stream.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => {
                let said = String::from_utf8_lossy(&seen).trim().to_string();
                return Err(ClientError::transport(
                    &format!("nu-session-host did not start on {name}"),
                    if said.is_empty() { "no output".into() } else { said },
                )
                .with_help(format!(
                    "install nu-session-host on {name} and put it on the PATH of non-interactive ssh commands (see docs/setup-remote.md)"
                )));
            }
        }
        if seen.len() > 64 * 1024 {
            return Err(ClientError::transport(
                &format!("{name} printed too much before nu-session-host started"),
                "more than 64 KiB of login output",
            ));
        }
    }
    Ok(())
}

async fn authenticate(
    handle: &mut Handle<Verifier>,
    target: &SshTarget,
    prompter: Option<&Prompter>,
) -> Result<(), ClientError> {
    let user = &target.user;
    let name = &target.computer_name;
    let failed =
        |e: russh::Error| ClientError::transport(&format!("authentication with {name} failed"), e);
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    if let Ok(mut agent) = keys::agent::client::AgentClient::connect_env().await
        && let Ok(identities) = agent.request_identities().await
    {
        for identity in identities {
            let key = identity.public_key().into_owned();
            let result = handle
                .authenticate_publickey_with(user, key, hash, &mut agent)
                .await;
            if result.is_ok_and(|r| r.success()) {
                return Ok(());
            }
        }
    }
    let mut tried = Vec::new();
    // What the server still accepts after the last refusal (unknown until one).
    let mut methods: Option<Vec<MethodKind>> = None;
    for file in &target.identity_files {
        if !file.exists() {
            continue;
        }
        tried.push(file.display().to_string());
        let Some(key) = load_key(file, prompter).await? else {
            continue;
        };
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        match handle
            .authenticate_publickey(user, key)
            .await
            .map_err(failed)?
        {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure {
                remaining_methods, ..
            } => methods = Some(remaining_methods.to_vec()),
        }
    }
    if let Some(prompter) = prompter {
        let methods = match methods {
            Some(methods) => methods,
            None => match handle.authenticate_none(user).await.map_err(failed)? {
                AuthResult::Success => return Ok(()),
                AuthResult::Failure {
                    remaining_methods, ..
                } => remaining_methods.to_vec(),
            },
        };
        if methods.contains(&MethodKind::KeyboardInteractive)
            && keyboard_interactive(handle, target, prompter).await?
        {
            return Ok(());
        }
        if methods.contains(&MethodKind::Password) {
            for _ in 0..TRIES {
                let Some(password) = prompter
                    .ask(format!("{user}@{}'s password: ", target.hostname))
                    .await
                else {
                    break;
                };
                if handle
                    .authenticate_password(user, password)
                    .await
                    .map_err(failed)?
                    .success()
                {
                    return Ok(());
                }
            }
        }
    }
    let missing: Vec<String> = target
        .identity_files
        .iter()
        .filter(|f| !f.exists())
        .map(|f| f.display().to_string())
        .collect();
    Err(ClientError::transport(
        &format!("{name} refused every key for user {user}"),
        match (tried.is_empty(), missing.is_empty()) {
            (true, false) => format!("no identity file exists: {}", missing.join(", ")),
            (true, true) => "no ssh-agent key and no identity file".to_string(),
            (false, _) => format!("tried the ssh-agent and {}", tried.join(", ")),
        },
    )
    .with_help(if prompter.is_some() {
        "check the user name, and that your public key is in the host's ~/.ssh/authorized_keys"
    } else {
        "check the user name, and that your public key is in the host's ~/.ssh/authorized_keys; passwords can only be asked for when nu runs in a terminal"
    }))
}

/// Reads a private key, asking for its passphrase when it is encrypted. `None`: the user gave
/// no passphrase (the next key is tried).
async fn load_key(
    file: &std::path::Path,
    prompter: Option<&Prompter>,
) -> Result<Option<keys::PrivateKey>, ClientError> {
    let unreadable = |e: keys::Error| {
        ClientError::transport(&format!("cannot read the key {}", file.display()), e)
    };
    match keys::load_secret_key(file, None) {
        Ok(key) => return Ok(Some(key)),
        Err(keys::Error::KeyIsEncrypted) => {}
        Err(e) => return Err(unreadable(e)),
    }
    let Some(prompter) = prompter else {
        return Err(ClientError::transport(
            &format!("the key {} is encrypted", file.display()),
            "no terminal to ask for its passphrase",
        )
        .with_help(format!(
            "add it to your ssh-agent (ssh-add {}), or run nu in a terminal",
            file.display()
        )));
    };
    for _ in 0..TRIES {
        let Some(passphrase) = prompter
            .ask(format!("Enter passphrase for key '{}': ", file.display()))
            .await
        else {
            return Ok(None);
        };
        match keys::load_secret_key(file, Some(&passphrase)) {
            Ok(key) => return Ok(Some(key)),
            // A wrong passphrase fails decryption; ask again.
            Err(_) => continue,
        }
    }
    Err(ClientError::transport(
        &format!("cannot decrypt the key {}", file.display()),
        format!("wrong passphrase {TRIES} times"),
    ))
}

/// Answers the server's keyboard-interactive prompts on the terminal. `Ok(false)`: refused.
async fn keyboard_interactive(
    handle: &mut Handle<Verifier>,
    target: &SshTarget,
    prompter: &Prompter,
) -> Result<bool, ClientError> {
    let failed = |e: russh::Error| {
        ClientError::transport(
            &format!("authentication with {} failed", target.computer_name),
            e,
        )
    };
    for _ in 0..TRIES {
        let mut response = handle
            .authenticate_keyboard_interactive_start(&target.user, None)
            .await
            .map_err(failed)?;
        loop {
            match response {
                KeyboardInteractiveAuthResponse::Success => return Ok(true),
                KeyboardInteractiveAuthResponse::Failure { .. } => break,
                KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    let mut answers = Vec::with_capacity(prompts.len());
                    for prompt in prompts {
                        let text =
                            format!("({}@{}) {}", target.user, target.hostname, prompt.prompt);
                        match prompter.ask(text).await {
                            Some(answer) => answers.push(answer),
                            None => return Ok(false),
                        }
                    }
                    response = handle
                        .authenticate_keyboard_interactive_respond(answers)
                        .await
                        .map_err(failed)?;
                }
            }
        }
    }
    Ok(false)
}
