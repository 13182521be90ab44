//! Real terminals for the tests of what a user sees: tmux panes to read and type into, and
//! `script(1)` pseudo-terminals for commands that need one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{eventually, run_quiet, shell_quote};
use crate::{Sandbox, bin_dir, nu_binary};

/// A tmux terminal: read its screen, type into it. Killed when dropped.
pub struct Terminal {
    socket: PathBuf,
}

impl Terminal {
    fn tmux(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    /// What the terminal shows, with its scrollback, lines joined where they wrapped.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text` (at least `times` times); returns the screen.
    pub fn wait_for_n(&self, text: &str, times: usize, timeout: Duration) -> String {
        let mut screen = String::new();
        let found = eventually(timeout, || {
            screen = self.screen();
            screen.matches(text).count() >= times
        });
        assert!(
            found,
            "the terminal never showed {text:?} {times}×:\n{screen}"
        );
        screen
    }

    pub fn wait_for(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_n(text, 1, timeout)
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        run_quiet(self.tmux().args(["send-keys", "-t", "t", "-l", text]));
    }

    /// Presses keys by tmux name (`Enter`, `C-c`, `C-d`).
    pub fn press(&self, key: &str) {
        run_quiet(self.tmux().args(["send-keys", "-t", "t", key]));
    }

    /// Types a line and presses Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.press("Enter");
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

impl Sandbox {
    /// A real terminal (tmux, 200×50) running `nu` with the plugin and `script`, with the ssh
    /// config when given. The pane stays after nu exits, showing `[exited N]`.
    pub fn terminal(&self, config: Option<&Path>, script: Option<&str>) -> Terminal {
        let mut line = format!(
            "{} -n --no-std-lib --plugins {}",
            shell_quote(&nu_binary().display().to_string()),
            shell_quote(&format!(
                "[{}]",
                bin_dir().join("nu_plugin_session").display()
            )),
        );
        if let Some(script) = script {
            line.push_str(&format!(" -c {}", shell_quote(script)));
        }
        let socket = self.path().join("tmux.sock");
        let mut command = Command::new("tmux");
        command
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                "-s",
                "t",
            ])
            .arg(format!("{line}; echo \"[exited $?]\"; sleep 600"))
            .env("NU_SESSION_DIR", self.runtime_dir())
            .env("NU_SESSION_HOST", bin_dir().join("nu-session-host"))
            .env("TERM", "xterm-256color")
            // Histories (enter-session's) stay in the sandbox.
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.path());
        if let Some(config) = config {
            command.env("NU_SESSION_SSH_CONFIG", config);
        }
        run_quiet(&mut command);
        Terminal { socket }
    }

    /// Runs a script with the ssh config as [`Sandbox::ssh_run`] does, but with a terminal
    /// (a pseudo-terminal from `script`) as its stdin, stdout and stderr. Returns what the
    /// terminal showed.
    pub fn pty_run(&self, config: &Path, script: &str) -> String {
        let quote = |s: &str| shell_quote(s);
        let line = format!(
            "{} -n --no-std-lib --plugins {} -c {}",
            quote(&nu_binary().display().to_string()),
            quote(&format!(
                "[{}]",
                bin_dir().join("nu_plugin_session").display()
            )),
            quote(script)
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("NU_SESSION_DIR", self.runtime_dir())
            .env("NU_SESSION_HOST", bin_dir().join("nu-session-host"))
            .env("NU_SESSION_SSH_CONFIG", config)
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.path())
            .stdin(Stdio::null())
            .output()
            .expect("run script(1)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
