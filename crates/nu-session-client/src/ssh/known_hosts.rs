//! Host keys: checked against every `UserKnownHostsFile` and `GlobalKnownHostsFile`, read as
//! OpenSSH reads them: host patterns with `*`, `?` and `!`, hashed entries (`|1|salt|hash`,
//! what `HashKnownHosts yes` writes), `[host]:port` for other ports, `HostKeyAlias` in place of
//! the host, several keys per host (a key rotated in: any matching one is accepted), and
//! `@revoked` keys, never accepted for any host. A key that differs from one of the same
//! algorithm recorded for the host is refused as CHANGED, naming the file and line; an unknown
//! key follows `StrictHostKeyChecking` (`yes`/`ask` refuse with how to accept it, `accept-new`
//! learns it into the first user file, `no` accepts it). Host certificates are asked for when
//! an `@cert-authority` line is trusted for the host, and accepted as OpenSSH accepts them
//! ([`certificate_problem`]); one that is not leaves its plain key, checked as any other (a
//! refusal then says why the certificate was not enough).

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

/// What a known_hosts line is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Marker {
    /// A host's key.
    Key,
    /// `@revoked`: never accepted, for any host.
    Revoked,
    /// `@cert-authority`: host certificates it signs are trusted for the line's hosts.
    Authority,
}

/// One line of a known_hosts file.
struct Entry {
    marker: Marker,
    hosts: String,
    key: PublicKey,
    file: PathBuf,
    line: usize,
}

/// The lines of `files` (missing files are empty; lines that are not entries are skipped, as
/// OpenSSH skips them).
fn entries(files: &[PathBuf]) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
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
            let (marker, hosts) = match first {
                "@revoked" => (Marker::Revoked, fields.next()),
                "@cert-authority" => (Marker::Authority, fields.next()),
                other if other.starts_with('@') => continue,
                other => (Marker::Key, Some(other)),
            };
            let (Some(hosts), Some(_kind), Some(encoded)) = (hosts, fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(key) = keys::parse_public_key_base64(encoded) else {
                continue;
            };
            entries.push(Entry {
                marker,
                hosts: hosts.to_string(),
                key,
                file: file.clone(),
                line: n + 1,
            });
        }
    }
    Ok(entries)
}

/// The keys of a `RevokedHostKeys` file, as `@revoked` entries. A binary KRL cannot be read
/// here, and a file that cannot be read revokes nothing it should: both are errors (as in
/// OpenSSH, which refuses to connect when it cannot check).
fn revoked_file(path: &std::path::Path) -> std::io::Result<Vec<Entry>> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(b"SSHKRL\n\0") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is a binary KRL, which nu-session cannot read (a list of public keys it can)",
                path.display()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let (Some(_kind), Some(encoded)) =
            (fields.next().filter(|f| !f.starts_with('#')), fields.next())
        else {
            continue;
        };
        if let Ok(key) = keys::parse_public_key_base64(encoded) {
            entries.push(Entry {
                marker: Marker::Revoked,
                hosts: "*".to_string(),
                key,
                file: path.to_path_buf(),
                line: n + 1,
            });
        }
    }
    Ok(entries)
}

/// The `@revoked` line of `key`, if any.
fn revoked<'a>(entries: &'a [Entry], key: &keys::ssh_key::public::KeyData) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| e.marker == Marker::Revoked && e.key.key_data() == key)
}

/// Looks the key up for `host` (`host` or `[host]:port`, as the files write it).
fn verdict(entries: &[Entry], host: &str, key: &PublicKey) -> Verdict {
    if let Some(entry) = revoked(entries, key.key_data()) {
        return Verdict::Revoked(entry.file.clone(), entry.line);
    }
    let mut changed = None;
    for entry in entries {
        if entry.marker != Marker::Key || !matches_host(&entry.hosts, host) {
            continue;
        }
        if entry.key.key_data() == key.key_data() {
            return Verdict::Known;
        }
        if entry.key.algorithm() == key.algorithm() && changed.is_none() {
            changed = Some((entry.file.clone(), entry.line));
        }
    }
    match changed {
        Some((file, line)) => Verdict::Changed(file, line),
        None => Verdict::Unknown,
    }
}

/// The authorities (`@cert-authority` lines) trusted for `host`.
fn authorities<'a>(entries: &'a [Entry], host: &'a str) -> impl Iterator<Item = &'a Entry> {
    entries
        .iter()
        .filter(move |e| e.marker == Marker::Authority && matches_host(&e.hosts, host))
}

/// Why a host certificate is not accepted for `principal` (the host name, or its
/// `HostKeyAlias`) by the authorities trusted for `host`, checked as OpenSSH checks it: a host
/// certificate, signed by a trusted authority, valid now, naming the host among its principals
/// (or naming none), with no critical options. `None`: it is accepted.
fn certificate_problem(
    entries: &[Entry],
    host: &str,
    principal: &str,
    certificate: &keys::Certificate,
    now: u64,
    signature_algorithms: &[String],
) -> Option<String> {
    let signer = certificate.signature_key();
    if !certificate.cert_type().is_host() {
        return Some("it is a user certificate, not a host certificate".to_string());
    }
    let Some(authority) = authorities(entries, host).find(|e| e.key.key_data() == signer) else {
        return Some(format!(
            "no @cert-authority line for {host} trusts its signer ({})",
            signer.fingerprint(keys::HashAlg::Sha256)
        ));
    };
    let signed_with = certificate.signature().algorithm();
    if !signature_algorithms
        .iter()
        .any(|a| a.as_str() == signed_with.as_str())
    {
        return Some(format!(
            "its authority signed it with {}, which CASignatureAlgorithms does not allow",
            signed_with.as_str()
        ));
    }
    if now < certificate.valid_after() {
        return Some(format!(
            "it is not valid before {} (Unix time; now {now})",
            certificate.valid_after()
        ));
    }
    if now >= certificate.valid_before() {
        return Some(format!(
            "it expired at {} (Unix time; now {now})",
            certificate.valid_before()
        ));
    }
    let fingerprint = authority.key.fingerprint(keys::HashAlg::Sha256);
    if certificate.validate_at(now, [&fingerprint]).is_err() {
        return Some(format!(
            "its signature does not verify with the authority of {}:{}",
            authority.file.display(),
            authority.line
        ));
    }
    let principals = certificate.valid_principals();
    if !principals.is_empty() && !principals.iter().any(|p| p == principal) {
        return Some(format!(
            "it is for {}, not {principal}",
            principals
                .iter()
                .map(|p| crate::text::printable(p))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !certificate.critical_options().is_empty() {
        return Some(format!(
            "it has critical options ({}), which a host certificate may not have",
            certificate
                .critical_options()
                .keys()
                .map(|k| crate::text::printable(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// Seconds since 1970, as certificates count validity.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The certificate algorithms to ask a host for when an authority is trusted for it (else
/// none: the host shows its plain key, checked against the files).
const CERTIFICATE_ALGORITHMS: &[keys::Algorithm] = &[
    keys::Algorithm::Ed25519,
    keys::Algorithm::Ecdsa {
        curve: keys::EcdsaCurve::NistP256,
    },
    keys::Algorithm::Ecdsa {
        curve: keys::EcdsaCurve::NistP384,
    },
    keys::Algorithm::Ecdsa {
        curve: keys::EcdsaCurve::NistP521,
    },
    keys::Algorithm::Rsa {
        hash: Some(keys::HashAlg::Sha512),
    },
    keys::Algorithm::Rsa {
        hash: Some(keys::HashAlg::Sha256),
    },
];

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
#[derive(Clone)]
pub(super) struct Verifier {
    target: SshTarget,
    refusal: Arc<Mutex<Option<ClientError>>>,
    /// The known_hosts files' entries and the `RevokedHostKeys` file's keys, read once per
    /// connection (or why they could not be: then every key is refused).
    entries: Arc<Result<Vec<Entry>, String>>,
}

impl Verifier {
    /// Reads the files `target` names (blocking: call it off the I/O threads). A refusal is
    /// written to `refusal`.
    pub(super) fn load(target: SshTarget, refusal: Arc<Mutex<Option<ClientError>>>) -> Verifier {
        let files: Vec<PathBuf> = target
            .known_hosts
            .iter()
            .chain(&target.global_known_hosts)
            .cloned()
            .collect();
        let read = || -> std::io::Result<Vec<Entry>> {
            let mut all = entries(&files)?;
            if let Some(path) = &target.revoked_host_keys {
                all.extend(revoked_file(path)?);
            }
            Ok(all)
        };
        let entries = Arc::new(read().map_err(|e| e.to_string()));
        Verifier {
            target,
            refusal,
            entries,
        }
    }

    fn refuse(&self, error: ClientError) -> bool {
        if let Ok(mut refusal) = self.refusal.lock() {
            *refusal = Some(error);
        }
        false
    }

    /// The name host keys are looked up under: `host`, `[host]:port`, or the `HostKeyAlias`
    /// (without the port).
    fn name(&self) -> String {
        match &self.target.host_key_alias {
            Some(alias) => alias.clone(),
            None => known_hosts_name(&self.target.hostname, self.target.port),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        self.target
            .known_hosts
            .iter()
            .chain(&self.target.global_known_hosts)
            .cloned()
            .collect()
    }

    /// The certificate algorithms to offer: all of them when an `@cert-authority` line is
    /// trusted for this host, else none.
    pub(super) fn certificate_algorithms(&self) -> &'static [keys::Algorithm] {
        match &*self.entries {
            Ok(entries) if authorities(entries, &self.name()).next().is_some() => {
                CERTIFICATE_ALGORITHMS
            }
            _ => &[],
        }
    }

    fn revoked(&self, what: &str, file: &std::path::Path, line: usize) -> bool {
        self.refuse(
            ClientError::transport(
                &format!(
                    "the {what} of {} is REVOKED: refusing to connect",
                    self.target.computer_name
                ),
                format!("{}:{line} marks it @revoked", file.display()),
            )
            .with_help(
                "a revoked key is never accepted; ask the host's administrator for its new key",
            ),
        )
    }

    /// The host's key (`Ok`) or certificate (`Err`), accepted or not.
    fn decide(&self, presented: &Result<PublicKey, keys::Certificate>) -> bool {
        let entries = match &*self.entries {
            Ok(entries) => entries,
            Err(e) => {
                return self.refuse(ClientError::transport(
                    "cannot read the known_hosts files or RevokedHostKeys: refusing to connect",
                    e,
                ));
            }
        };
        match presented {
            Ok(key) => self.check(entries, key, None),
            Err(certificate) => self.check_certificate(entries, certificate),
        }
    }

    /// A host certificate: accepted when a trusted authority vouches for it. Otherwise, as
    /// OpenSSH does, the key inside it is checked as a plain key (the refusal says why the
    /// certificate was not enough). A revoked authority or key is refused outright.
    fn check_certificate(&self, entries: &[Entry], certificate: &keys::Certificate) -> bool {
        if let Some(entry) = revoked(entries, certificate.signature_key()) {
            return self.revoked("certificate authority", &entry.file, entry.line);
        }
        let key = PublicKey::new(certificate.public_key().clone(), "");
        let principal = match &self.target.host_key_alias {
            Some(alias) => alias.clone(),
            None => self.target.hostname.to_ascii_lowercase(),
        };
        let problem = certificate_problem(
            entries,
            &self.name(),
            &principal,
            certificate,
            unix_now(),
            &self.target.ca_signature_algorithms,
        );
        match problem {
            None if revoked(entries, key.key_data()).is_none() => true,
            None => self.check(entries, &key, None),
            Some(problem) => self.check(entries, &key, Some(problem)),
        }
    }

    /// A plain host key. `certificate`: why the host's certificate was not accepted.
    fn check(&self, entries: &[Entry], key: &PublicKey, certificate: Option<String>) -> bool {
        let (host, port) = (&self.target.hostname, self.target.port);
        let name = self.name();
        let files = self.files();
        match verdict(entries, &name, key) {
            Verdict::Known => return true,
            Verdict::Revoked(file, line) => {
                let what = if certificate.is_some() {
                    "certified host key"
                } else {
                    "host key"
                };
                return self.revoked(what, &file, line);
            }
            Verdict::Changed(file, line) => {
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
            Verdict::Unknown => {}
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
            // As OpenSSH: a certificate that is not accepted leaves its plain key, which
            // StrictHostKeyChecking decides on; the refusal says why the certificate failed.
            StrictHostKeyChecking::Yes => self.refuse(
                ClientError::transport(
                    &match &certificate {
                        None => format!("the host key of {} is unknown", self.target.computer_name),
                        Some(_) => format!(
                            "the host certificate of {} is not accepted",
                            self.target.computer_name
                        ),
                    },
                    format!(
                        "{}no known_hosts file ({}) has a key for {name}",
                        certificate
                            .as_ref()
                            .map(|c| format!("{c}; "))
                            .unwrap_or_default(),
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                )
                .with_help(match certificate {
                    Some(_) => "have the host's administrator check its HostCertificate (ssh-keygen -L -f shows it), or check and add its plain key to known_hosts".to_string(),
                    None => format!(
                        "connect once with `ssh {}` to check and accept the key, or set StrictHostKeyChecking accept-new for this host in ~/.ssh/config (or pass --strict-host-key-checking accept-new)",
                        self.target.computer_name
                    ),
                }),
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
        // Off the I/O threads: hashed entries cost an HMAC each, accept-new writes a file.
        let verifier = self.clone();
        let presented = match key {
            keys::PublicKeyOrCertificate::PublicKey { key, .. } => Ok(key.clone()),
            keys::PublicKeyOrCertificate::Certificate(certificate) => Err(certificate.clone()),
        };
        let decided = tokio::task::spawn_blocking(move || verifier.decide(&presented));
        Ok(decided.await.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::ssh_keygen as keygen;

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
        let entries = entries(&[dir.path().join("missing"), file.clone()]).unwrap();
        match verdict(&entries, host, &key(line)) {
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

    /// A CA and a host key made by `ssh-keygen`, and the host key signed with `args`
    /// (`-h`, `-n`, `-V` ...). Returns the CA's public key line and the certificate.
    fn certify(dir: &std::path::Path, args: &[&str]) -> (String, keys::Certificate) {
        let (ca, host) = (dir.join("ca"), dir.join("host"));
        for key in [&ca, &host] {
            if !key.exists() {
                crate::ssh::new_test_key(key);
            }
        }
        let mut sign = vec!["-q", "-s", ca.to_str().unwrap(), "-I", "test"];
        sign.extend(args);
        let public = host.with_extension("pub");
        sign.push(public.to_str().unwrap());
        keygen(&sign);
        let ca = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
        let certificate = keys::Certificate::read_file(&dir.join("host-cert.pub")).unwrap();
        (
            ca.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
            certificate,
        )
    }

    #[test]
    fn a_host_certificate_is_checked_as_openssh_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let problem = |known_hosts: &str, host: &str, principal: &str, c: &keys::Certificate| {
            let file = dir.path().join("known_hosts");
            std::fs::write(&file, known_hosts).unwrap();
            let allowed = ["ssh-ed25519".to_string()];
            certificate_problem(
                &entries(&[file]).unwrap(),
                host,
                principal,
                c,
                now,
                &allowed,
            )
        };
        let (ca, good) = certify(dir.path(), &["-h", "-n", "web1,web1.example.com"]);
        let trusted = format!("@cert-authority *.example.com,web? {ca}\n");
        assert_eq!(problem(&trusted, "web1", "web1", &good), None);
        assert_eq!(
            problem(&trusted, "web1.example.com", "web1.example.com", &good),
            None
        );
        // Not a principal of the certificate.
        let why = problem(&trusted, "web2", "web2", &good).unwrap();
        assert!(
            why.contains("it is for web1, web1.example.com, not web2"),
            "{why}"
        );
        // The authority is trusted for other hosts only; a plain key line is not an authority.
        let why = problem(
            &format!("@cert-authority db* {ca}\n"),
            "web1",
            "web1",
            &good,
        )
        .unwrap();
        assert!(
            why.contains("no @cert-authority line for web1 trusts"),
            "{why}"
        );
        assert!(problem(&format!("web1 {ca}\n"), "web1", "web1", &good).is_some());
        // Validity: expired, and not yet valid.
        let (_, expired) = certify(dir.path(), &["-h", "-n", "web1", "-V", "20200101:20200102"]);
        let why = problem(&trusted, "web1", "web1", &expired).unwrap();
        assert!(why.contains("expired"), "{why}");
        let (_, later) = certify(dir.path(), &["-h", "-n", "web1", "-V", "+1d:+2d"]);
        let why = problem(&trusted, "web1", "web1", &later).unwrap();
        assert!(why.contains("not valid before"), "{why}");
        // No principals: valid for any host the authority is trusted for (as OpenSSH).
        let (_, any) = certify(dir.path(), &["-h"]);
        assert_eq!(problem(&trusted, "web3", "web3", &any), None);
        // A user certificate is not a host certificate.
        let (_, user) = certify(dir.path(), &["-n", "web1"]);
        let why = problem(&trusted, "web1", "web1", &user).unwrap();
        assert!(why.contains("user certificate"), "{why}");
        // A revoked authority is found as a revoked key.
        let revoked_ca = format!("{trusted}@revoked * {ca}\n");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, revoked_ca).unwrap();
        assert!(revoked(&entries(&[file]).unwrap(), good.signature_key()).is_some());
    }

    #[test]
    fn a_sha1_signature_of_an_rsa_authority_is_refused_as_openssh_8_2_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, host) = (dir.path().join("ca"), dir.path().join("host"));
        keygen(&[
            "-q",
            "-t",
            "rsa",
            "-b",
            "2048",
            "-N",
            "",
            "-f",
            ca.to_str().unwrap(),
        ]);
        crate::ssh::new_test_key(&host);
        let ca_line = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
        let ca_key = ca_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("@cert-authority * {ca_key}\n")).unwrap();
        let entries = entries(&[file]).unwrap();
        let defaults = SshTarget::from_ssh_g("h", "user a\nhostname h\n", dir.path())
            .unwrap()
            .ca_signature_algorithms;
        let now = unix_now();
        for (signature, accepted) in [("ssh-rsa", false), ("rsa-sha2-512", true)] {
            let public = host.with_extension("pub");
            keygen(&[
                "-q",
                "-s",
                ca.to_str().unwrap(),
                "-t",
                signature,
                "-I",
                "t",
                "-h",
                public.to_str().unwrap(),
            ]);
            let certificate =
                keys::Certificate::read_file(&dir.path().join("host-cert.pub")).unwrap();
            let problem = certificate_problem(&entries, "h", "h", &certificate, now, &defaults);
            assert_eq!(problem.is_none(), accepted, "{signature}: {problem:?}");
            if let Some(problem) = problem {
                assert!(problem.contains("CASignatureAlgorithms"), "{problem}");
            }
        }
    }

    #[test]
    fn a_revoked_host_keys_file_revokes_its_keys_and_a_binary_krl_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("revoked");
        std::fs::write(&list, format!("# old web1\n{A} retired\n")).unwrap();
        let entries = revoked_file(&list).unwrap();
        assert!(revoked(&entries, key(A).key_data()).is_some());
        assert!(revoked(&entries, key(B).key_data()).is_none());
        let public = dir.path().join("a.pub");
        std::fs::write(&public, format!("{A}\n")).unwrap();
        let krl = dir.path().join("krl");
        keygen(&["-k", "-f", krl.to_str().unwrap(), public.to_str().unwrap()]);
        let error = revoked_file(&krl).err().expect("a binary KRL is an error");
        assert!(error.to_string().contains("binary KRL"), "{error}");
        assert!(revoked_file(&dir.path().join("missing")).is_err());
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
