//! What commands do to sessions, each written once: open one on a host, connect (attach) this
//! process to one, disconnect it, remove it, and discover the sessions hosts have.

use std::time::Duration;

use nu_plugin::{EngineInterface, EvaluatedCall};
use nu_protocol::{LabeledError, Span, Spanned};
use nu_session_client::{ClientError, ErrorKind, Host, OutputBuffering, SessionSettings};

use crate::SessionPlugin;
use crate::errors::{Action, client_error, in_enter_session, no_session, wrong_state};
use crate::select::Reported;
use crate::sessions::{Session, SessionState, TransportKind};

/// Creates a session on `host` and attaches to it: the session `id` of this process.
pub fn open(
    id: i64,
    host: Host,
    computer_name: String,
    transport: TransportKind,
    settings: SessionSettings,
) -> Result<Session, ClientError> {
    let info = host.create_session(settings)?;
    let handle = host.attach(info.instance_id)?;
    let port = host.port();
    Ok(Session::from_info(
        id,
        handle.info(),
        computer_name,
        transport,
        port,
        host,
        Some(handle),
    ))
}

/// Attaches this process to the session unless it is attached already.
pub fn connect(plugin: &SessionPlugin, id: i64, span: Span) -> Result<(), LabeledError> {
    let (host, instance_id) = {
        let table = plugin.sessions();
        let session = table.get(id).ok_or_else(|| no_session(id, span))?;
        match session.state() {
            SessionState::Opened => return Ok(()),
            SessionState::Disconnected if !session.attached_elsewhere => {
                (session.host.clone(), session.instance_id)
            }
            _ => return Err(wrong_state(session, Action::Connect, span)),
        }
    };
    match host.attach(instance_id) {
        Ok(handle) => {
            if let Some(session) = plugin.sessions().get_mut(id) {
                session.attached(handle);
            }
            Ok(())
        }
        Err(error) => {
            let mut table = plugin.sessions();
            let name = match table.get_mut(id) {
                Some(session) => {
                    match error.kind() {
                        ErrorKind::Busy => session.attached_elsewhere = true,
                        ErrorKind::NotFound => session.close(),
                        _ => {}
                    }
                    session.name.clone()
                }
                None => String::new(),
            };
            let mut labeled = client_error(&error, span);
            labeled.msg = format!("cannot connect session {id} ({name}): {}", labeled.msg);
            Err(labeled)
        }
    }
}

/// Detaches this process from an Opened session, which keeps running on its host, with new
/// settings when given. A Disconnected session is left as it is.
pub fn disconnect(
    plugin: &SessionPlugin,
    id: i64,
    idle_timeout: Option<Duration>,
    output_buffering: Option<OutputBuffering>,
    span: Span,
) -> Result<(), LabeledError> {
    let handle = {
        let table = plugin.sessions();
        let session = table.get(id).ok_or_else(|| no_session(id, span))?;
        if session.interactive {
            return Err(in_enter_session(session, span));
        }
        match (session.state(), &session.handle) {
            // Disconnecting a disconnected session changes nothing.
            (SessionState::Disconnected, _) => return Ok(()),
            (SessionState::Opened, Some(handle)) => handle.clone(),
            _ => return Err(wrong_state(session, Action::Disconnect, span)),
        }
    };
    let info = handle
        .disconnect(idle_timeout, output_buffering)
        .map_err(|e| client_error(&e, span))?;
    if let Some(session) = plugin.sessions().get_mut(id) {
        session.detached(&info);
    }
    Ok(())
}

/// Closes the session here and deletes it on its host (one already gone there is no error).
pub fn remove(plugin: &SessionPlugin, id: i64) -> Result<(), ClientError> {
    let target = {
        let mut table = plugin.sessions();
        table.get_mut(id).and_then(|session| {
            let open = !session.closed;
            session.close();
            session.removed = true;
            open.then(|| (session.host.clone(), session.instance_id))
        })
    };
    match target {
        Some((host, instance_id)) => match host.remove_session(instance_id) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

/// Asks each of `computers` (in parallel) for all of this user's sessions there. Sessions this
/// process has not seen join its table (Disconnected; Busy when another client is attached);
/// known ones are updated; known ones a host no longer has are Closed (the host's answer is the
/// truth). Returns what each host reported, and the computers that did not answer, with why.
pub fn discover(
    plugin: &SessionPlugin,
    engine: &EngineInterface,
    call: &EvaluatedCall,
    computers: &[Spanned<String>],
) -> Result<(Reported, Vec<(String, LabeledError)>), LabeledError> {
    let mut reported = Reported::default();
    let mut unreachable = Vec::new();
    if computers.is_empty() {
        return Ok((reported, unreachable));
    }
    let ssh = crate::flags::ssh(plugin, call, engine)?;
    let throttle = crate::flags::throttle(call)?;
    let answers = crate::fanout::run_each(
        computers,
        throttle,
        "get-session",
        |computer| computer.span,
        |computer| {
            let (host, transport) = crate::hosts::host_for(plugin, engine, computer, &ssh)?;
            let listed = host.list_sessions();
            plugin.tell_notices(&computer.item, &host);
            let infos = listed.map_err(|e| client_error(&e, computer.span))?;
            Ok((host, transport, infos))
        },
    );
    for (computer, answer) in computers.iter().zip(answers) {
        let (host, transport, infos) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                unreachable.push((computer.item.clone(), error));
                continue;
            }
        };
        let mut table = plugin.sessions();
        for stale in table
            .all_mut()
            .filter(|s| !s.closed && s.host.same_as(&host))
            .filter(|s| infos.iter().all(|i| i.instance_id != s.instance_id))
        {
            stale.close();
        }
        for info in &infos {
            if let Some(known) = table.by_instance_id(info.instance_id) {
                if !known.closed {
                    known.update(info);
                }
                continue;
            }
            let id = table.next_id();
            let mut session = Session::from_info(
                id,
                info.clone(),
                computer.item.clone(),
                transport,
                host.port(),
                host.clone(),
                None,
            );
            session.update(info);
            table.insert(session);
        }
        reported.add(
            &computer.item,
            infos.iter().map(|info| info.instance_id).collect(),
        );
    }
    Ok((reported, unreachable))
}
