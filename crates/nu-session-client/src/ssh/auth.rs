//! Authentication: the ssh-agent first, then identity files (unencrypted, or encrypted ones
//! whose passphrase is asked for), then keyboard-interactive and passwords asked on the terminal.
//! Nothing secret is ever taken from arguments or logged.

use std::sync::Arc;

use russh::MethodKind;
use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{self, PrivateKeyWithHashAlg};

use crate::ClientError;

use super::config::SshTarget;
use super::known_hosts::Verifier;

/// Asks the user for a secret (a key's passphrase, a password) on their terminal. `None`: there
/// is no terminal, or the user gave up. Secrets are never taken from arguments and never logged.
#[derive(Clone)]
pub struct Prompter(Arc<Ask>);

type Ask = dyn Fn(&str) -> Option<Secret> + Send + Sync;

/// A passphrase or password: wiped from memory when dropped. (Once handed to the SSH library
/// for a password or keyboard-interactive answer, its copy there is not.)
pub type Secret = zeroize::Zeroizing<String>;

impl Prompter {
    pub fn new(ask: impl Fn(&str) -> Option<Secret> + Send + Sync + 'static) -> Self {
        Prompter(Arc::new(ask))
    }

    /// Asks without blocking the I/O runtime.
    async fn ask(&self, prompt: String) -> Option<Secret> {
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

pub(super) async fn authenticate(
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
    let mut agent = match target.identity_agent.socket() {
        Some(socket) => keys::agent::client::AgentClient::connect_uds(socket)
            .await
            .ok(),
        None => None,
    };
    let agent_keys = match &mut agent {
        Some(agent) => agent.request_identities().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut tried = Vec::new();
    // What the server still accepts after the last refusal (unknown until one).
    let mut methods: Option<Vec<MethodKind>> = None;
    let offering = target.clone();
    let identities = tokio::task::spawn_blocking(move || offered(&offering, agent_keys))
        .await
        .unwrap_or_default();
    // A file's key, read (and decrypted) once for its certificate and itself.
    let mut loaded: Option<(std::path::PathBuf, Option<Arc<keys::PrivateKey>>)> = None;
    // Why a file could not be used (unreadable, encrypted without a terminal): the next key is
    // tried, and this is the error if none gets in.
    let mut unusable: Option<ClientError> = None;
    for identity in identities {
        let result = match identity {
            Identity::Agent(key, certificate) => {
                let Some(agent) = agent.as_mut() else {
                    continue;
                };
                // An agent that cannot sign (a key needing a confirmation refused): the next.
                let result = match certificate {
                    Some(certificate) => {
                        handle
                            .authenticate_certificate_with(user, certificate, hash, agent)
                            .await
                    }
                    None => {
                        handle
                            .authenticate_publickey_with(user, key, hash, agent)
                            .await
                    }
                };
                match result {
                    Ok(result) => result,
                    Err(_) => continue,
                }
            }
            Identity::File(file, certificate) => {
                if loaded.as_ref().is_none_or(|(f, _)| *f != file) {
                    tried.push(file.display().to_string());
                    let key = match load_key(&file, prompter).await {
                        Ok(key) => key.map(Arc::new),
                        Err(e) => {
                            unusable.get_or_insert(e);
                            None
                        }
                    };
                    loaded = Some((file.clone(), key));
                }
                let Some(key) = loaded.as_ref().and_then(|(_, key)| key.clone()) else {
                    continue;
                };
                match certificate {
                    Some(certificate) => handle
                        .authenticate_openssh_cert(user, key, certificate)
                        .await
                        .map_err(failed)?,
                    None => handle
                        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
                        .await
                        .map_err(failed)?,
                }
            }
        };
        match result {
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
                    .authenticate_password(user, password.as_str())
                    .await
                    .map_err(failed)?
                    .success()
                {
                    return Ok(());
                }
            }
        }
    }
    if let Some(error) = unusable {
        return Err(error);
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
            (true, true) => "no identity file, and no key of the ssh-agent was taken".to_string(),
            (false, _) => format!("tried {}", tried.join(", ")),
        },
    )
    .with_help(if prompter.is_some() {
        "check the user name, and that your public key is in the host's ~/.ssh/authorized_keys"
    } else {
        "check the user name, and that your public key is in the host's ~/.ssh/authorized_keys; passwords can only be asked for when nu runs in a terminal"
    }))
}

/// A key to offer: one held by the agent, or an identity file; with the certificate offered
/// for it, when there is one (a key's certificate goes just before the key itself).
#[derive(Debug, PartialEq)]
enum Identity {
    Agent(keys::PublicKey, Option<keys::Certificate>),
    File(std::path::PathBuf, Option<keys::Certificate>),
}

/// The keys to offer, in OpenSSH's order for plain keys: the identity files the agent holds
/// (through the agent), then the agent's other keys unless `IdentitiesOnly`, then the remaining
/// identity files that exist. Offering every agent key first would use up the server's
/// `MaxAuthTries` before the key configured for the host. A key's certificate — one the agent
/// holds, a `CertificateFile` that certifies it, or the `<file>-cert.pub` beside its file — goes
/// just before it; each key and each certificate is offered once.
fn offered(target: &SshTarget, agent_keys: Vec<keys::agent::AgentIdentity>) -> Vec<Identity> {
    let certificates: Vec<keys::Certificate> = target
        .certificate_files
        .iter()
        .filter_map(|file| keys::Certificate::read_file(file).ok())
        .collect();
    let certified = |key: &keys::PublicKey| {
        certificates
            .iter()
            .find(|c| c.public_key() == key.key_data())
            .cloned()
    };
    let mut files: Vec<(
        std::path::PathBuf,
        Option<keys::PublicKey>,
        Option<keys::Certificate>,
    )> = target
        .identity_files
        .iter()
        .filter(|f| f.exists())
        .map(|f| {
            let beside = certificate_beside(f);
            let public = public_key_of(f).or_else(|| {
                beside
                    .as_ref()
                    .map(|c| keys::PublicKey::new(c.public_key().clone(), ""))
            });
            let certificate = public
                .as_ref()
                .and_then(|p| certified(p).or(beside.filter(|c| c.public_key() == p.key_data())));
            (f.clone(), public, certificate)
        })
        .collect();
    let mut preferred = Vec::new();
    let mut others = Vec::new();
    // Each agent key once, and its certificate once, however often the agent lists them.
    let mut seen: Vec<(keys::ssh_key::public::KeyData, bool)> = Vec::new();
    let mut offer = |list: &mut Vec<Identity>,
                     key: &keys::PublicKey,
                     certificate: Option<keys::Certificate>| {
        let seen_as = (key.key_data().clone(), certificate.is_some());
        if !seen.contains(&seen_as) {
            seen.push(seen_as);
            list.push(Identity::Agent(key.clone(), certificate));
        }
    };
    for identity in agent_keys {
        let (key, certificate) = match identity {
            keys::agent::AgentIdentity::PublicKey { key, .. } => (key, None),
            keys::agent::AgentIdentity::Certificate { certificate, .. } => (
                keys::PublicKey::new(certificate.public_key().clone(), ""),
                Some(certificate),
            ),
        };
        let held = files.iter().position(|(_, public, _)| {
            public
                .as_ref()
                .is_some_and(|p| p.key_data() == key.key_data())
        });
        let (list, certificate) = match held {
            Some(i) => (&mut preferred, certificate.or(files.remove(i).2)),
            None if !target.identities_only => (&mut others, certificate),
            None => continue,
        };
        if let Some(certificate) = certificate.or_else(|| certified(&key)) {
            offer(list, &key, Some(certificate));
        }
        offer(list, &key, None);
    }
    preferred.append(&mut others);
    for (file, public, certificate) in files {
        // russh signs a file's RSA certificate with an algorithm sshd refuses: the key alone.
        let certificate =
            certificate.filter(|_| !public.as_ref().is_some_and(|p| p.algorithm().is_rsa()));
        if let Some(certificate) = certificate {
            preferred.push(Identity::File(file.clone(), Some(certificate)));
        }
        preferred.push(Identity::File(file, None));
    }
    preferred
}

/// The `<file>-cert.pub` beside an identity file, if there is one.
fn certificate_beside(file: &std::path::Path) -> Option<keys::Certificate> {
    let mut beside = file.as_os_str().to_owned();
    beside.push("-cert.pub");
    keys::Certificate::read_file(std::path::Path::new(&beside)).ok()
}

/// An identity file's public key: its `.pub`, or the key itself when it is not encrypted.
fn public_key_of(file: &std::path::Path) -> Option<keys::PublicKey> {
    let mut public = file.as_os_str().to_owned();
    public.push(".pub");
    keys::load_public_key(std::path::Path::new(&public))
        .ok()
        .or_else(|| {
            keys::load_secret_key(file, None)
                .ok()
                .map(|k| k.public_key().clone())
        })
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
    match read_key(file, None).await {
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
        match read_key(file, Some(passphrase)).await {
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

/// Reads (and decrypts: a key derivation of many rounds) a private key off the I/O threads.
async fn read_key(
    file: &std::path::Path,
    passphrase: Option<Secret>,
) -> Result<keys::PrivateKey, keys::Error> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        keys::load_secret_key(&file, passphrase.as_ref().map(|p| p.as_str()))
    })
    .await
    .unwrap_or_else(|e| Err(keys::Error::IO(std::io::Error::other(e))))
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
                        // The server's words, shown on the user's terminal: never obeyed.
                        let text = format!(
                            "({}@{}) {}",
                            target.user,
                            target.hostname,
                            crate::text::printable(&prompt.prompt)
                        );
                        match prompter.ask(text).await {
                            Some(answer) => answers.push(answer.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ssh::ssh_keygen as keygen;

    fn key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, keys::PublicKey) {
        let path = dir.join(name);
        crate::ssh::new_test_key(&path);
        let public = keys::load_public_key(path.with_extension("pub")).unwrap();
        (path, public)
    }

    fn kinds(identities: &[Identity]) -> Vec<String> {
        identities
            .iter()
            .map(|identity| match identity {
                Identity::Agent(key, c) => format!("agent {} {}", key.comment(), c.is_some()),
                Identity::File(file, c) => {
                    format!(
                        "file {} {}",
                        file.file_name().unwrap().to_string_lossy(),
                        c.is_some()
                    )
                }
            })
            .collect()
    }

    #[test]
    fn each_key_and_certificate_is_offered_once_in_openssh_s_order() {
        let dir = tempfile::tempdir().unwrap();
        let (k, k_public) = key(dir.path(), "k");
        let (f2, _) = key(dir.path(), "f2");
        let (_, x_public) = key(dir.path(), "x");
        let (ca, _) = key(dir.path(), "ca");
        let k_pub = k.with_extension("pub");
        keygen(&[
            "-q",
            "-s",
            ca.to_str().unwrap(),
            "-I",
            "t",
            "-n",
            "alice",
            k_pub.to_str().unwrap(),
        ]);
        let certificate = keys::Certificate::read_file(&dir.path().join("k-cert.pub")).unwrap();
        let mut target = SshTarget::from_ssh_g(
            "web1",
            &format!(
                "user alice\nhostname web1\nidentityfile {}\nidentityfile {}\n",
                k.display(),
                f2.display()
            ),
            dir.path(),
        )
        .unwrap();
        let named = |mut key: keys::PublicKey, name: &str| {
            key.set_comment(name);
            key
        };
        let (k_public, x_public) = (named(k_public, "K"), named(x_public, "X"));
        // The agent lists K's certificate, K, and another key X.
        let agent = || {
            vec![
                keys::agent::AgentIdentity::from(certificate.clone()),
                keys::agent::AgentIdentity::from(k_public.clone()),
                keys::agent::AgentIdentity::from(x_public.clone()),
            ]
        };
        let k_of_agent = |list: Vec<Identity>| {
            // The certificate from the agent has no comment: name it by its key.
            list.into_iter()
                .map(|identity| match identity {
                    Identity::Agent(key, c) if key.key_data() == k_public.key_data() => {
                        Identity::Agent(named(key, "K"), c)
                    }
                    other => other,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&k_of_agent(offered(&target, agent()))),
            [
                "agent K true",
                "agent K false",
                "agent X false",
                "file f2 false"
            ]
        );
        target.identities_only = true;
        assert_eq!(
            kinds(&k_of_agent(offered(&target, agent()))),
            ["agent K true", "agent K false", "file f2 false"]
        );
        // Without the agent: the file's own certificate (beside it) before its key.
        assert_eq!(
            kinds(&offered(&target, Vec::new())),
            ["file k true", "file k false", "file f2 false"]
        );
        // An agent holding K plain: K's certificate from beside the file, through the agent.
        let plain = vec![keys::agent::AgentIdentity::from(k_public.clone())];
        assert_eq!(
            kinds(&offered(&target, plain)),
            ["agent K true", "agent K false", "file f2 false"]
        );
    }
}
