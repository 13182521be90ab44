//! Where and how to reach a host, as OpenSSH would: the configuration comes from `ssh -G`, so
//! `Host` aliases, `HostName`, `User`, `Port`, `IdentityFile`, `UserKnownHostsFile`,
//! `CertificateFile`, `IdentitiesOnly`, `IdentityAgent`, `StrictHostKeyChecking`, `ConnectTimeout`, `ProxyJump` and
//! the keepalives mean exactly what
//! they mean to `ssh`. Flags (user, port, identity file) override the config.

use std::path::PathBuf;
use std::time::Duration;

use crate::ClientError;
use crate::computer::ComputerName;

use super::Prompter;
use super::host_program::Deploy;

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

/// Which ssh-agent to ask for keys (`IdentityAgent`).
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityAgent {
    /// The socket an environment variable names (`SSH_AUTH_SOCK`, the default, or `$NAME`).
    Env(String),
    Path(PathBuf),
    /// `none`: no agent.
    None,
}

impl IdentityAgent {
    /// Reads `ssh -G`'s value (paths come expanded).
    fn parse(value: &str) -> IdentityAgent {
        match value {
            "none" => IdentityAgent::None,
            "SSH_AUTH_SOCK" => IdentityAgent::Env(value.to_string()),
            other => match other.strip_prefix('$') {
                Some(name) => IdentityAgent::Env(name.to_string()),
                None => IdentityAgent::Path(PathBuf::from(other)),
            },
        }
    }

    /// The agent's socket, if there is one to ask.
    pub fn socket(&self) -> Option<PathBuf> {
        match self {
            IdentityAgent::Env(name) => std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            IdentityAgent::Path(path) => Some(path.clone()),
            IdentityAgent::None => None,
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
    /// `CertificateFile`: certificates offered with the identity file whose key they certify.
    pub certificate_files: Vec<PathBuf>,
    /// `IdentitiesOnly`: offer only the identity files' keys (an agent's are used only for
    /// those), never every key of the agent.
    pub identities_only: bool,
    /// `IdentityAgent`: where the agent is.
    pub identity_agent: IdentityAgent,
    pub known_hosts: Vec<PathBuf>,
    /// `GlobalKnownHostsFile`: read, never written.
    pub global_known_hosts: Vec<PathBuf>,
    /// `RevokedHostKeys`: a file of keys never accepted (public keys, one per line).
    pub revoked_host_keys: Option<PathBuf>,
    /// `CASignatureAlgorithms`: what a certificate authority may have signed with.
    pub ca_signature_algorithms: Vec<String>,
    /// `HostKeyAlias`: the name host keys are looked up and recorded under.
    pub host_key_alias: Option<String>,
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

/// OpenSSH's `CASignatureAlgorithms` (SHA-1 `ssh-rsa` is not among them since 8.2).
const DEFAULT_CA_SIGNATURE_ALGORITHMS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,sk-ssh-ed25519@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256";

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
    /// Whether (and how) this client's host program is copied to a host that lacks one.
    pub deploy: Deploy,
}

impl SshTarget {
    /// Whether a connection made for `other` is one this target may share: everything but the
    /// name the user typed is the same (address, user, port, keys, host key policy, jumps).
    pub fn same_connection(&self, other: &SshTarget) -> bool {
        SshTarget {
            computer_name: String::new(),
            ..self.clone()
        } == SshTarget {
            computer_name: String::new(),
            ..other.clone()
        }
    }

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
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut target = SshTarget::from_ssh_g(&name.to_string(), &text, &home)?;
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

    /// Reads the flat `key value` lines `ssh -G` prints (`~/` is `home`).
    pub(super) fn from_ssh_g(
        computer_name: &str,
        text: &str,
        home: &std::path::Path,
    ) -> Result<SshTarget, ClientError> {
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
            certificate_files: Vec::new(),
            identities_only: false,
            identity_agent: IdentityAgent::Env("SSH_AUTH_SOCK".to_string()),
            known_hosts: Vec::new(),
            global_known_hosts: Vec::new(),
            host_key_alias: None,
            revoked_host_keys: None,
            ca_signature_algorithms: DEFAULT_CA_SIGNATURE_ALGORITHMS
                .split(',')
                .map(str::to_string)
                .collect(),
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
                "certificatefile" => target.certificate_files.push(expand(value)),
                "identitiesonly" => target.identities_only = value == "yes",
                "identityagent" => target.identity_agent = IdentityAgent::parse(value),
                "userknownhostsfile" => {
                    target.known_hosts = value.split_whitespace().map(expand).collect();
                }
                "globalknownhostsfile" => {
                    target.global_known_hosts = value.split_whitespace().map(expand).collect();
                }
                "revokedhostkeys" if value != "none" => {
                    target.revoked_host_keys = Some(expand(value));
                }
                "casignaturealgorithms" => {
                    target.ca_signature_algorithms = value.split(',').map(str::to_string).collect();
                }
                "hostkeyalias" if value != "none" => {
                    target.host_key_alias = Some(value.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    // What OpenSSH 9.2 prints for `ssh -G`, kept as it printed it (81 lines each).
    const CONFIGURED: &str = include_str!("testdata/ssh-g-configured.txt");
    const DEFAULTS: &str = include_str!("testdata/ssh-g-defaults.txt");
    const PROXY_COMMAND: &str = include_str!("testdata/ssh-g-proxycommand.txt");

    fn read(text: &str) -> Result<SshTarget, ClientError> {
        SshTarget::from_ssh_g("web1", text, std::path::Path::new("/home/alice"))
    }

    #[test]
    fn a_configured_host_means_what_it_means_to_ssh() {
        let target = read(CONFIGURED).unwrap();
        assert_eq!(target.computer_name, "web1");
        assert_eq!(target.hostname, "10.0.0.5");
        assert_eq!(target.user, "deploy");
        assert_eq!(target.port, 2222);
        // In order, `~/` expanded.
        assert_eq!(
            target.identity_files,
            [
                PathBuf::from("/home/alice/.ssh/web1_ed25519"),
                PathBuf::from("/etc/keys/shared")
            ]
        );
        assert_eq!(
            target.known_hosts,
            [
                PathBuf::from("/home/alice/.ssh/known_hosts"),
                PathBuf::from("/etc/ssh/fleet_known_hosts")
            ]
        );
        assert_eq!(target.strict, StrictHostKeyChecking::AcceptNew);
        assert_eq!(target.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(target.alive_interval, Duration::from_secs(5));
        assert_eq!(target.alive_count_max, 4);
        assert_eq!(target.proxy_jump, ["bastion", "jump2:2200"]);
        assert!(!target.identities_only);
        assert_eq!(
            target.identity_agent,
            IdentityAgent::Env("SSH_AUTH_SOCK".into())
        );
    }

    #[test]
    fn identities_only_and_identity_agent_are_read() {
        let target = read("user a\nhostname h\nidentitiesonly yes\nidentityagent none\n").unwrap();
        assert!(target.identities_only);
        assert_eq!(target.identity_agent, IdentityAgent::None);
        assert_eq!(target.identity_agent.socket(), None);
        for (value, want) in [
            ("SSH_AUTH_SOCK", IdentityAgent::Env("SSH_AUTH_SOCK".into())),
            ("$MY_AGENT", IdentityAgent::Env("MY_AGENT".into())),
            (
                "/run/user/1/agent",
                IdentityAgent::Path("/run/user/1/agent".into()),
            ),
        ] {
            let target = read(&format!("user a\nhostname h\nidentityagent {value}\n")).unwrap();
            assert_eq!(target.identity_agent, want, "{value}");
        }
    }

    #[test]
    fn defaults_are_openssh_s_except_the_keepalive() {
        let target = read(DEFAULTS).unwrap();
        assert_eq!((target.hostname.as_str(), target.port), ("plain", 22));
        assert_eq!(target.user, "alice");
        // `ask` has nobody to ask: it refuses unknown keys.
        assert_eq!(target.strict, StrictHostKeyChecking::Yes);
        // `connecttimeout none`: no timeout of its own.
        assert_eq!(target.connect_timeout, None);
        // OpenSSH's interval 0 (off) becomes ours: a session must notice a dead network.
        assert_eq!(target.alive_interval, DEFAULT_ALIVE_INTERVAL);
        assert_eq!(target.alive_count_max, 3);
        assert!(target.proxy_jump.is_empty());
        assert_eq!(target.identity_files.len(), 7);
        assert!(
            target
                .identity_files
                .iter()
                .all(|f| f.starts_with("/home/alice/.ssh"))
        );
        assert_eq!(target.known_hosts.len(), 2);
        assert_eq!(
            target.global_known_hosts,
            [
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2")
            ]
        );
        assert_eq!(target.host_key_alias, None);
    }

    #[test]
    fn a_proxy_command_is_refused_with_what_to_use_instead() {
        let error = read(PROXY_COMMAND).unwrap_err();
        assert!(error.to_string().contains("ProxyCommand"), "{error}");
        assert!(format!("{error:?}").contains("ProxyJump"), "{error:?}");
    }

    #[test]
    fn output_without_a_host_or_user_is_an_error_not_a_guess() {
        assert!(read("").is_err());
        assert!(read("hostname web1\n").is_err());
        assert!(read("user alice\n").is_err());
        // Lines it does not know, or without a value, are skipped.
        let target = read("user alice\nhostname web1\nnonsense\nport x\n").unwrap();
        assert_eq!(target.port, 22);
    }

    #[test]
    fn strict_host_key_checking_reads_every_spelling() {
        for (text, want) in [
            ("yes", Some(StrictHostKeyChecking::Yes)),
            ("ask", Some(StrictHostKeyChecking::Yes)),
            ("Accept-New", Some(StrictHostKeyChecking::AcceptNew)),
            ("off", Some(StrictHostKeyChecking::No)),
            ("no", Some(StrictHostKeyChecking::No)),
            ("maybe", None),
        ] {
            assert_eq!(StrictHostKeyChecking::parse(text), want, "{text}");
        }
    }

    #[test]
    fn connections_are_shared_only_when_all_but_the_name_match() {
        let a = read(CONFIGURED).unwrap();
        let mut b = a.clone();
        b.computer_name = "alias-of-web1".into();
        assert!(a.same_connection(&b));
        b.strict = StrictHostKeyChecking::No;
        assert!(!a.same_connection(&b));
        // Which keys may be offered, and by which agent, are settings of the connection too.
        let mut c = a.clone();
        c.identities_only = !a.identities_only;
        assert!(!a.same_connection(&c));
        let mut d = a.clone();
        d.identity_agent = IdentityAgent::None;
        assert!(!a.same_connection(&d));
    }
}
