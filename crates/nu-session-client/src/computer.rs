//! Computer names as users type them: `host`, `user@host`, `host:port`, `user@host:port`,
//! `[v6addr]:port` (or a `~/.ssh/config` alias in place of `host`).
//!
//! Everything is validated before any connection is attempted: nothing in a name can smuggle an
//! option (`-oProxyCommand=...`), a second host, or shell syntax into what the transport runs.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputerName {
    pub user: Option<String>,
    /// A host name, an IPv4 address, an IPv6 address (without brackets), or an ssh config alias.
    pub host: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    pub what: &'static str,
    pub reason: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.reason)
    }
}

impl std::error::Error for InvalidName {}

impl ComputerName {
    pub fn parse(text: &str) -> Result<ComputerName, InvalidName> {
        let (user, rest) = match text.rsplit_once('@') {
            Some((user, rest)) => (Some(validate_user(user)?), rest),
            None => (None, text),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (addr, after) = bracketed.split_once(']').ok_or_else(|| InvalidName {
                what: "computer name",
                reason: format!("`{text}` opens `[` without closing it"),
            })?;
            let port = match after {
                "" => None,
                _ => Some(parse_port(after.strip_prefix(':').ok_or_else(|| {
                    InvalidName {
                        what: "computer name",
                        reason: format!("expected `:port` after `]` in `{text}`"),
                    }
                })?)?),
            };
            // `[host]:port` is OpenSSH's form for any host (ssh -G writes jump hosts so).
            let host = if addr.contains(':') {
                validate_v6(addr)?
            } else {
                validate_host(addr)?
            };
            (host, port)
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address: no port can be given without brackets.
            (validate_v6(rest)?, None)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (validate_host(host)?, Some(parse_port(port)?)),
                None => (validate_host(rest)?, None),
            }
        };
        Ok(ComputerName { user, host, port })
    }
}

impl fmt::Display for ComputerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// A user name: letters, digits, `.`, `_`, `-` (not first), and a trailing `$` as on some systems.
pub fn validate_user(user: &str) -> Result<String, InvalidName> {
    let body = user.strip_suffix('$').unwrap_or(user);
    validate_word(body, "user name", 256).map(|_| user.to_string())
}

/// A host name, IPv4 address or ssh config alias: letters, digits, `.`, `_`, `-` (not first).
fn validate_host(host: &str) -> Result<String, InvalidName> {
    validate_word(host, "computer name", 253)
}

/// Letters, digits, `.`, `_` and `-`, not starting with `-` (which a command would take for an
/// option), at most `max` bytes.
fn validate_word(word: &str, what: &'static str, max: usize) -> Result<String, InvalidName> {
    let invalid = |reason: String| InvalidName { what, reason };
    if word.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if word.len() > max {
        return Err(invalid(format!("it is longer than {max} characters")));
    }
    if word.starts_with('-') {
        return Err(invalid(format!("`{word}` starts with `-`")));
    }
    match word
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(invalid(format!("`{word}` contains {c:?}"))),
        None => Ok(word.to_string()),
    }
}

fn validate_v6(addr: &str) -> Result<String, InvalidName> {
    addr.parse::<std::net::Ipv6Addr>()
        .map(|_| addr.to_string())
        .map_err(|_| InvalidName {
            what: "computer name",
            reason: format!("`{addr}` is not an IPv6 address"),
        })
}

/// A port: 1 to 65535.
pub fn parse_port(port: &str) -> Result<u16, InvalidName> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.chars().all(|c| c.is_ascii_digit()) => Ok(p),
        _ => Err(InvalidName {
            what: "port",
            reason: format!("`{port}` is not a port number from 1 to 65535"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(user: Option<&str>, host: &str, port: Option<u16>) -> ComputerName {
        ComputerName {
            user: user.map(String::from),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            ComputerName::parse("web1").unwrap(),
            name(None, "web1", None)
        );
        assert_eq!(
            ComputerName::parse("alice@web1.example.com").unwrap(),
            name(Some("alice"), "web1.example.com", None)
        );
        assert_eq!(
            ComputerName::parse("10.0.0.5:2222").unwrap(),
            name(None, "10.0.0.5", Some(2222))
        );
        assert_eq!(
            ComputerName::parse("bob@web1:22").unwrap(),
            name(Some("bob"), "web1", Some(22))
        );
        assert_eq!(
            ComputerName::parse("[::1]:2200").unwrap(),
            name(None, "::1", Some(2200))
        );
        assert_eq!(
            ComputerName::parse("carol@[fe80::1]").unwrap(),
            name(Some("carol"), "fe80::1", None)
        );
        assert_eq!(ComputerName::parse("::1").unwrap(), name(None, "::1", None));
        // OpenSSH brackets any host so (`ssh -G` prints jump hosts this way).
        assert_eq!(
            ComputerName::parse("root@[10.0.0.5]:2222").unwrap(),
            name(Some("root"), "10.0.0.5", Some(2222))
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "web1",
            "alice@web1:2222",
            "[::1]:2200",
            "bob@[fe80::1]:22",
            "::1",
        ] {
            assert_eq!(ComputerName::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_anything_that_could_smuggle_options_or_syntax() {
        for bad in [
            "",
            "-oProxyCommand=touch /tmp/x",
            "web1 -p 22",
            "web1;touch x",
            "web1$(id)",
            "web1`id`",
            "web1\nweb2",
            "-lroot@web1",
            "--@web1",
            "a@",
            "@web1",
            "web1:0",
            "web1:65536",
            "web1:22x",
            "web1:+22",
            "[::1",
            "[::1]22",
            "[not v6]:22",
            "[-oProxyCommand=x]:22",
            "[]:22",
            "web1/../x",
            "user name@web1",
            "web1:",
        ] {
            assert!(ComputerName::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = ComputerName::parse("-oProxyCommand=x").unwrap_err();
        assert_eq!(err.what, "computer name");
        assert!(err.reason.contains("starts with `-`"), "{err}");
        let err = ComputerName::parse("web1:99999").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid port: `99999` is not a port number from 1 to 65535"
        );
        let err = ComputerName::parse("ro ot@web1").unwrap_err();
        assert_eq!(err.what, "user name");
    }
}
