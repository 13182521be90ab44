//! Host keys: checked against every `UserKnownHostsFile`. A changed key is refused naming the
//! file and line; an unknown key follows `StrictHostKeyChecking` (`yes`/`ask` refuse with how to
//! accept it, `accept-new` learns it, `no` accepts it).

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::{self, PublicKey};

use crate::ClientError;

use super::config::{SshTarget, StrictHostKeyChecking};

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
