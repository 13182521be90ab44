//! Every `help` example of every command, run in-process against real host processes.

use nu_plugin_session::SessionPlugin;
use nu_plugin_session::commands::{
    Command, ConnectSession, DisconnectSession, ExitSession, GetSession, InvokeSession, NewSession,
    ReceiveSession, RemoveSession,
};
use nu_plugin_test_support::PluginTest;
use nu_protocol::{ShellError, Value};
use nu_session_tests::{Sandbox, bin_dir};

/// A plugin test whose sessions live in `sandbox`, with the few local commands the examples use.
fn plugin_test(sandbox: &Sandbox) -> Result<PluginTest, ShellError> {
    let mut test = PluginTest::new("session", SessionPlugin::default().into())?;
    test.add_decl(Box::new(nu_command::Select))?;
    test.add_decl(Box::new(nu_command::Get))?;
    test.add_decl(Box::new(nu_command::Values))?;
    let state = test.engine_state_mut();
    let dir = sandbox.runtime_dir().display().to_string();
    state.add_env_var("NU_SESSION_DIR".into(), Value::test_string(dir));
    let host = bin_dir().join("nu-session-host").display().to_string();
    state.add_env_var("NU_SESSION_HOST".into(), Value::test_string(host));
    let pwd = sandbox.path().display().to_string();
    state.add_env_var("PWD".into(), Value::test_string(pwd));
    Ok(test)
}

#[test]
fn new_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(NewSession))
}

#[test]
fn get_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(GetSession))
}

#[test]
fn remove_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(RemoveSession))
}

#[test]
fn invoke_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(InvokeSession))
}

#[test]
fn disconnect_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(DisconnectSession))
}

#[test]
fn connect_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(ConnectSession))
}

#[test]
fn receive_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(ReceiveSession))
}

// enter-session's examples need a terminal: `help` shows them and nothing runs them.
#[test]
fn exit_session_examples() -> Result<(), ShellError> {
    let sandbox = Sandbox::new();
    plugin_test(&sandbox)?.test_command_examples(&Command(ExitSession))
}
