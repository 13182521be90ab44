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
        Some(agent) => agent
            .request_identities()
            .await
            .unwrap_or_default()
            .iter()
            .map(|identity| identity.public_key().into_owned())
            .collect(),
        None => Vec::new(),
    };
    let mut tried = Vec::new();
    // What the server still accepts after the last refusal (unknown until one).
    let mut methods: Option<Vec<MethodKind>> = None;
    let offering = target.clone();
    let identities = tokio::task::spawn_blocking(move || offered(&offering, agent_keys))
        .await
        .unwrap_or_default();
    for identity in identities {
        let result = match identity {
            Identity::Agent(key) => {
                let Some(agent) = agent.as_mut() else {
                    continue;
                };
                // An agent that cannot sign (a key needing a confirmation refused): the next.
                match handle
                    .authenticate_publickey_with(user, key, hash, agent)
                    .await
                {
                    Ok(result) => result,
                    Err(_) => continue,
                }
            }
            Identity::File(file) => {
                tried.push(file.display().to_string());
                let Some(key) = load_key(&file, prompter).await? else {
                    continue;
                };
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
                handle
                    .authenticate_publickey(user, key)
                    .await
                    .map_err(failed)?
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

/// A key to offer: one held by the agent, or an identity file.
#[derive(Debug, PartialEq)]
enum Identity {
    Agent(keys::PublicKey),
    File(std::path::PathBuf),
}

/// The keys to offer, in OpenSSH's order: the identity files the agent holds (through the
/// agent), then the agent's other keys unless `IdentitiesOnly`, then the remaining identity
/// files that exist. Offering every agent key first would use up the server's `MaxAuthTries`
/// before the key configured for the host.
fn offered(target: &SshTarget, agent_keys: Vec<keys::PublicKey>) -> Vec<Identity> {
    let mut files: Vec<(std::path::PathBuf, Option<keys::PublicKey>)> = target
        .identity_files
        .iter()
        .filter(|f| f.exists())
        .map(|f| (f.clone(), public_key_of(f)))
        .collect();
    let mut preferred = Vec::new();
    let mut others = Vec::new();
    for key in agent_keys {
        let held = files.iter().position(|(_, public)| {
            public
                .as_ref()
                .is_some_and(|p| p.key_data() == key.key_data())
        });
        match held {
            Some(i) => {
                files.remove(i);
                preferred.push(Identity::Agent(key));
            }
            None if !target.identities_only => others.push(Identity::Agent(key)),
            None => {}
        }
    }
    preferred.extend(others);
    preferred.extend(files.into_iter().map(|(file, _)| Identity::File(file)));
    preferred
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
