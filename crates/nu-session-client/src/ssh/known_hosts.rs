//! Host keys: checked against every `UserKnownHostsFile` and `GlobalKnownHostsFile`, read as
//! OpenSSH reads them: host patterns with `*`, `?` and `!`, hashed entries (`|1|salt|hash`,
//! what `HashKnownHosts yes` writes), `[host]:port` for other ports, `HostKeyAlias` in place of
//! the host, several keys per host (a key rotated in: any matching one is accepted), and
//! `@revoked` keys, never accepted for any host. A key that differs from one of the same
//! algorithm recorded for the host is refused as CHANGED, naming the file and line; an unknown
//! key follows `StrictHostKeyChecking` (`yes`/`ask` refuse with how to accept it, `accept-new`
//! learns it into the first user file, `no` accepts it). `@cert-authority` lines are skipped:
//! host certificates are refused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use data_encoding::BASE64_MIME;
use hmac::{Hmac, KeyInit, Mac};
use russh::client;
use russh::keys::{self, PublicKey};
use sha1::Sha1;

use crate::ClientError;

use super::config::{SshTarget, StrictHostKeyChecking};

/// What the known_hosts files say of a key for a host.
#[derive(Debug, PartialEq)]
enum Verdict {
    Known,
    /// On an `@revoked` line: file and line.
    Revoked(PathBuf, usize),
    /// The host has another key of this algorithm: file and line.
    Changed(PathBuf, usize),
    Unknown,
}

/// Looks the key up for `host` (`host` or `[host]:port`, as the files write it) in `files`.
fn verdict(files: &[PathBuf], host: &str, key: &PublicKey) -> std::io::Result<Verdict> {
    let mut changed = None;
    let mut known = false;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (n, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next().filter(|f| !f.starts_with('#')) else {
                continue;
            };
            let (marker, hosts) = if first.starts_with('@') {
                (Some(first), fields.next())
            } else {
                (None, Some(first))
            };
            let (Some(hosts), Some(_kind), Some(encoded)) = (hosts, fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(recorded) = keys::parse_public_key_base64(encoded) else {
                continue;
            };
            match marker {
                Some("@revoked") if recorded.key_data() == key.key_data() => {
                    return Ok(Verdict::Revoked(file.clone(), n + 1));
                }
                Some(_) => {}
                None if matches_host(hosts, host) => {
                    if recorded.key_data() == key.key_data() {
                        known = true;
                    } else if recorded.algorithm() == key.algorithm() && changed.is_none() {
                        changed = Some((file.clone(), n + 1));
                    }
                }
                None => {}
            }
        }
    }
    Ok(match (known, changed) {
        (true, _) => Verdict::Known,
        (false, Some((file, line))) => Verdict::Changed(file, line),
        (false, None) => Verdict::Unknown,
    })
}

/// Whether a known_hosts line's host patterns (comma-separated) take in `host`: one matches and
/// no negated one (`!pattern`) does.
fn matches_host(patterns: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= matches_hashed(hashed, &host);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if glob(&negated.to_ascii_lowercase(), &host) {
                return false;
            }
        } else if glob(&pattern.to_ascii_lowercase(), &host) {
            matched = true;
        }
    }
    matched
}

/// A hashed entry, `salt|hash` (base64): HMAC-SHA1 of the host keyed with the salt.
fn matches_hashed(entry: &str, host: &str) -> bool {
    let Some((salt, hash)) = entry.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64_MIME.decode(salt.as_bytes()),
        BASE64_MIME.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    Hmac::<Sha1>::new_from_slice(&salt)
        .map(|mac| {
            mac.chain_update(host.as_bytes())
                .verify_slice(&hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `*` (any run) and `?` (any one character), as OpenSSH's patterns. (Not the plugin's name
/// globs: those take `[a-z]` classes, where a known_hosts `[` is literal, as in `[host]:port`.)
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Decides on the server's host key.
pub(super) struct Verifier {
    pub(super) target: SshTarget,
    pub(super) refusal: Arc<Mutex<Option<ClientError>>>,
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
        // With HostKeyAlias the alias is looked up (and learnt) instead, without the port.
        let name = match &self.target.host_key_alias {
            Some(alias) => alias.clone(),
            None => known_hosts_name(host, port),
        };
        let files: Vec<PathBuf> = self
            .target
            .known_hosts
            .iter()
            .chain(&self.target.global_known_hosts)
            .cloned()
            .collect();
        match verdict(&files, &name, key) {
            Ok(Verdict::Known) => return true,
            Ok(Verdict::Revoked(file, line)) => {
                return self.refuse(
                    ClientError::transport(
                        &format!(
                            "the host key of {} is REVOKED: refusing to connect",
                            self.target.computer_name
                        ),
                        format!("{}:{line} marks it @revoked", file.display()),
                    )
                    .with_help("a revoked key is never accepted; ask the host's administrator for its new key"),
                );
            }
            Ok(Verdict::Changed(file, line)) => {
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
                        "check the new key with the host's administrator, then remove the old one: ssh-keygen -R {name} -f {}",
                        file.display()
                    )),
                );
            }
            Ok(Verdict::Unknown) => {}
            Err(e) => {
                return self.refuse(ClientError::transport(
                    "cannot read the known_hosts files",
                    e,
                ));
            }
        }
        match self.target.strict {
            StrictHostKeyChecking::No => true,
            StrictHostKeyChecking::AcceptNew => {
                let file = self.target.known_hosts.first().cloned().unwrap_or_default();
                let (host, port) = match &self.target.host_key_alias {
                    Some(alias) => (alias.as_str(), 22),
                    None => (host.as_str(), port),
                };
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
                        "no known_hosts file ({}) has a key for {name}",
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEYybBlOaZS/DlPZlizNGguIKPPrCBuarYor8nQObOlr";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMBsk2H1/n51Tn+LN2n83pZgj/WEQcRNDVnAyF8bFBRq";
    /// `web1.example.com` hashed by `ssh-keygen -H`, with key A.
    const HASHED: &str = "|1|l7ozC4pvo+RxwZVP3pzccGdpYQI=|VhTvryU3919X0C2cy7REIW3/kTY=";

    fn key(line: &str) -> PublicKey {
        keys::parse_public_key_base64(line.split(' ').nth(1).unwrap()).unwrap()
    }

    fn judge(text: &str, host: &str, line: &str) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, text).unwrap();
        match verdict(
            &[dir.path().join("missing"), file.clone()],
            host,
            &key(line),
        )
        .unwrap()
        {
            Verdict::Revoked(_, n) => Verdict::Revoked(PathBuf::new(), n),
            Verdict::Changed(_, n) => Verdict::Changed(PathBuf::new(), n),
            other => other,
        }
    }

    #[test]
    fn plain_wildcard_negated_and_hashed_hosts() {
        let text =
            format!("# comment\nweb1,web2 {A}\n*.example.org {A}\n{HASHED} {A}\n[db]:2222 {A}\n");
        assert_eq!(judge(&text, "web2", A), Verdict::Known);
        assert_eq!(judge(&text, "WEB1", A), Verdict::Known);
        assert_eq!(judge(&text, "x.example.org", A), Verdict::Known);
        assert_eq!(judge(&text, "web1.example.com", A), Verdict::Known);
        assert_eq!(judge(&text, "[db]:2222", A), Verdict::Known);
        assert_eq!(judge(&text, "db", A), Verdict::Unknown);
        assert_eq!(judge(&text, "web3", A), Verdict::Unknown);
        let negated = format!("*.example.org,!bad.example.org {A}\n");
        assert_eq!(judge(&negated, "bad.example.org", A), Verdict::Unknown);
        assert_eq!(judge(&negated, "ok.example.org", A), Verdict::Known);
    }

    #[test]
    fn a_second_key_for_a_host_is_accepted_and_a_different_one_is_changed() {
        // Rotation: the old key first, the new one after; either is accepted.
        let text = format!("web1 {B}\nweb1\t{A} new\n");
        assert_eq!(judge(&text, "web1", A), Verdict::Known);
        assert_eq!(
            judge(&format!("web1 {B}\n"), "web1", A),
            Verdict::Changed(PathBuf::new(), 1)
        );
    }

    #[test]
    fn a_revoked_key_is_refused_even_when_also_known() {
        let text = format!("web1 {A}\n@revoked * {A}\n");
        assert_eq!(judge(&text, "web1", A), Verdict::Revoked(PathBuf::new(), 2));
        // Revoked for any host: the marker's patterns do not narrow it.
        let text = format!("web1 {A}\n@revoked other {A}\n");
        assert_eq!(judge(&text, "web1", A), Verdict::Revoked(PathBuf::new(), 2));
        // A CA line is not a host key.
        let text = format!("@cert-authority web1 {A}\n");
        assert_eq!(judge(&text, "web1", A), Verdict::Unknown);
    }

    #[test]
    fn globs_match_as_openssh_patterns() {
        assert!(glob("*", "anything"));
        assert!(glob("web?", "web1"));
        assert!(!glob("web?", "web12"));
        assert!(glob("*.example.*", "a.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("a*b*c", "axxbyyc"));
    }
}
