//! Completion of the commands' arguments in the user's shell: session ids (positionals),
//! session names (`--name`), instance ids, and computer names (new-session's and enter-session's
//! positionals, `--computer-name`): the `Host` aliases of the ssh configuration, `localhost`,
//! and the computers of known sessions.
//!
//! It goes through the plugin's dynamic completion, which nu 0.115 marks experimental: this
//! module and the command wrapper in [`crate::commands`] are the only places that use it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nu_plugin::{DynamicCompletionCall, EngineInterface};
use nu_protocol::DynamicSuggestion;
use nu_protocol::engine::ArgType;

use crate::SessionPlugin;
use crate::flags::env;

/// What an argument of a command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completes {
    Sessions,
    SessionsOrComputers,
    Names,
    InstanceIds,
    Computers,
}

/// What `arg` of `command` completes to, if anything.
fn completes(command: &str, arg: &ArgType) -> Option<Completes> {
    let selects = matches!(
        command,
        "get-session"
            | "connect-session"
            | "disconnect-session"
            | "receive-session"
            | "remove-session"
            | "enter-session"
    );
    match arg {
        ArgType::Flag(flag) => match flag.as_ref() {
            "computer-name" if selects => Some(Completes::Computers),
            "name" if selects => Some(Completes::Names),
            "instance-id" if selects => Some(Completes::InstanceIds),
            _ => None,
        },
        ArgType::Positional(0) if command == "invoke-session" => Some(Completes::Sessions),
        ArgType::Positional(0) if command == "enter-session" => {
            Some(Completes::SessionsOrComputers)
        }
        ArgType::Positional(_) if command == "new-session" => Some(Completes::Computers),
        ArgType::Positional(_) if selects && command != "enter-session" => {
            Some(Completes::Sessions)
        }
        ArgType::Positional(_) => None,
    }
}

/// The suggestions for `arg` of `command`; `None` leaves it to nu.
pub fn complete(
    command: &str,
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    _call: &DynamicCompletionCall,
    arg: &ArgType,
) -> Option<Vec<DynamicSuggestion>> {
    let wanted = completes(command, arg)?;
    let mut suggestions = Vec::new();
    if matches!(wanted, Completes::Sessions | Completes::SessionsOrComputers) {
        suggestions.extend(plugin.sessions().listed().map(|s| DynamicSuggestion {
            value: s.id.to_string(),
            description: Some(format!(
                "{} on {} ({})",
                s.name,
                s.computer_name,
                s.state().as_str()
            )),
            ..Default::default()
        }));
    }
    if wanted == Completes::Names {
        let names: BTreeSet<String> = plugin.sessions().listed().map(|s| s.name.clone()).collect();
        suggestions.extend(names.into_iter().map(|value| DynamicSuggestion {
            value,
            ..Default::default()
        }));
    }
    if wanted == Completes::InstanceIds {
        suggestions.extend(plugin.sessions().listed().map(|s| DynamicSuggestion {
            value: s.instance_id.to_string(),
            description: Some(format!("{} on {}", s.name, s.computer_name)),
            ..Default::default()
        }));
    }
    if matches!(
        wanted,
        Completes::Computers | Completes::SessionsOrComputers
    ) {
        suggestions.extend(
            computers(plugin, engine)
                .into_iter()
                .map(|value| DynamicSuggestion {
                    value,
                    ..Default::default()
                }),
        );
    }
    Some(suggestions)
}

/// `localhost`, the computers of known sessions, and the ssh configuration's `Host` aliases.
fn computers(plugin: &SessionPlugin, engine: &EngineInterface) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = plugin
        .sessions()
        .listed()
        .map(|s| s.computer_name.clone())
        .collect();
    names.insert("localhost".into());
    let home = env(engine, "HOME").ok().flatten().map(PathBuf::from);
    let config = env(engine, "NU_SESSION_SSH_CONFIG")
        .ok()
        .flatten()
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".ssh/config")));
    if let (Some(config), Some(home)) = (config, home) {
        names.extend(host_aliases(&config, &home.join(".ssh")));
    }
    names
}

/// The `Host` names of an ssh config file and the files it `Include`s (relative includes are
/// read from `ssh_dir`, as ssh does), leaving out patterns (`*`, `?`, `!`).
pub fn host_aliases(config: &Path, ssh_dir: &Path) -> Vec<String> {
    let mut aliases = Vec::new();
    let mut files = vec![config.to_path_buf()];
    let mut read = 0;
    // An Include loop or a huge tree must not hang completion.
    while let Some(file) = files.pop() {
        read += 1;
        if read > 64 {
            break;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let (keyword, rest) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
                Some((k, r)) => (
                    k,
                    r.trim_start_matches(|c: char| c.is_whitespace() || c == '='),
                ),
                None => continue,
            };
            if keyword.eq_ignore_ascii_case("host") {
                aliases.extend(
                    rest.split_whitespace()
                        .map(|name| name.trim_matches('"'))
                        .filter(|name| !name.contains(['*', '?', '!']) && !name.is_empty())
                        .map(str::to_string),
                );
            } else if keyword.eq_ignore_ascii_case("include") {
                for pattern in rest.split_whitespace() {
                    files.extend(include_paths(pattern, ssh_dir));
                }
            }
        }
    }
    aliases
}

/// The files an `Include` names: `~/` and relative paths as ssh resolves them, a `*` in the
/// last component matched against that directory.
fn include_paths(pattern: &str, ssh_dir: &Path) -> Vec<PathBuf> {
    let path = match pattern.strip_prefix("~/") {
        Some(rest) => ssh_dir.parent().unwrap_or(ssh_dir).join(rest),
        None if pattern.starts_with('/') => PathBuf::from(pattern),
        None => ssh_dir.join(pattern),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut matched: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| crate::select::matches(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    matched.sort();
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_come_from_host_lines_and_includes_without_patterns() {
        let dir =
            std::env::temp_dir().join(format!("nu-session-completion-{}", std::process::id()));
        let ssh = dir.join(".ssh");
        std::fs::create_dir_all(ssh.join("config.d")).unwrap();
        std::fs::write(
            ssh.join("config"),
            "Include config.d/*.conf\nHost web1 web2 *.example.com !bad\n  User alice\nhost=db\nMatch host x\nHost \"quoted\"\n",
        )
        .unwrap();
        std::fs::write(ssh.join("config.d/10-lab.conf"), "Host lab1\nHost lab-*\n").unwrap();
        let mut aliases = host_aliases(&ssh.join("config"), &ssh);
        aliases.sort();
        assert_eq!(aliases, ["db", "lab1", "quoted", "web1", "web2"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn arguments_complete_to_what_they_take() {
        let positional = ArgType::Positional(0);
        let flag = |f: &'static str| ArgType::Flag(f.into());
        assert_eq!(
            completes("new-session", &positional),
            Some(Completes::Computers)
        );
        assert_eq!(completes("new-session", &flag("name")), None);
        assert_eq!(
            completes("remove-session", &positional),
            Some(Completes::Sessions)
        );
        assert_eq!(
            completes("enter-session", &positional),
            Some(Completes::SessionsOrComputers)
        );
        assert_eq!(completes("invoke-session", &ArgType::Positional(1)), None);
        assert_eq!(
            completes("get-session", &flag("computer-name")),
            Some(Completes::Computers)
        );
        assert_eq!(
            completes("connect-session", &flag("name")),
            Some(Completes::Names)
        );
    }
}
