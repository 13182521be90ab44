//! The session core against a host played by the test, over an in-memory duplex (and, for
//! reattaching, a Unix socket where the session's would be) with the real codec: each
//! invocation's output to its call or the backlog, acknowledgements, flow control, resuming
//! after a broken connection, the end.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nu_protocol::{Span, Value};
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    Ack, Attachment, ClientMessage, ErrorKind, Event, EventBody, FrameCodec, Hello, HostMessage,
    OutputBuffering, Received, RemoteError, SessionInfo,
};
use tokio::net::UnixListener;
use tokio_util::codec::Framed;
use uuid::Uuid;

use super::{CallEvent, Link, SessionHandle};
use crate::Host;
use crate::host::ClientShared;
use crate::transport::Transport;

/// The host's end of a connection.
type HostEnd<S> = Framed<S, FrameCodec<ClientMessage, HostMessage>>;

const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    layout: Layout,
    host: Host,
    instance_id: Uuid,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path().join("rt"));
        layout.ensure_private().unwrap();
        let client = Arc::new(ClientShared::new());
        *client.reconnect_for.lock().unwrap() = Duration::from_secs(3);
        let host = Host::new(
            Transport::local(layout.clone(), None),
            runtime.handle().clone(),
            client,
        );
        Fixture {
            runtime,
            layout,
            host,
            instance_id: Uuid::new_v4(),
            _dir: dir,
        }
    }

    /// What the host says when the client attaches: `pending_calls` run there (another
    /// client's).
    fn attachment(&self, pending_calls: Vec<u64>) -> Attachment {
        Attachment {
            info: SessionInfo {
                instance_id: self.instance_id,
                name: "Session1".into(),
                configuration_name: "nu".into(),
                user: "alice".into(),
                created: chrono::Utc::now(),
                idle_timeout: Duration::from_secs(7200),
                output_buffering: OutputBuffering::Block,
                attached: true,
                attached_client: None,
                running: false,
                disconnected_on: None,
            },
            pending_calls,
            kept: Vec::new(),
            last_call_from_client: None,
            heartbeat: Duration::from_secs(10),
        }
    }

    /// A handle attached over an in-memory duplex; the test plays the host at the other end.
    fn attach(&self, attachment: Attachment) -> (SessionHandle, HostEnd<tokio::io::DuplexStream>) {
        let (client, host) = tokio::io::duplex(1 << 20);
        let _guard = self.runtime.enter();
        let conn = Framed::new(
            Box::pin(client) as std::pin::Pin<Box<dyn crate::transport::Stream>>,
            FrameCodec::new(),
        );
        let handle = SessionHandle::start(self.host.clone(), conn, attachment);
        (handle, Framed::new(host, FrameCodec::new()))
    }

    /// The next message the client sends that `keep` accepts (others are skipped).
    fn expect<S>(
        &self,
        end: &mut HostEnd<S>,
        mut keep: impl FnMut(&ClientMessage) -> bool,
    ) -> ClientMessage
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.runtime.block_on(async {
            tokio::time::timeout(WAIT, async {
                loop {
                    match end.next().await {
                        Some(Ok(message)) if keep(&message) => return message,
                        Some(Ok(_)) => continue,
                        other => panic!("the client's connection ended: {other:?}"),
                    }
                }
            })
            .await
            .expect("the client sent nothing of the kind")
        })
    }

    fn send<S>(&self, end: &mut HostEnd<S>, message: HostMessage)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.runtime.block_on(end.send(message)).unwrap();
    }

    /// The acknowledgements the client sends within a moment.
    fn acks<S>(&self, end: &mut HostEnd<S>) -> Vec<Ack>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.runtime.block_on(async {
            let mut acks = Vec::new();
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_millis(300), end.next()).await
            {
                if let ClientMessage::Ack(ack) = message {
                    acks.push(ack);
                }
            }
            acks
        })
    }

    /// The last acknowledgement of `call_id`'s output the client sends within a moment.
    fn last_ack<S>(&self, end: &mut HostEnd<S>, call_id: Option<u64>) -> Option<(u64, Option<u32>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.acks(end)
            .into_iter()
            .filter(|a| a.call_id == call_id)
            .map(|a| (a.seq, a.part))
            .next_back()
    }
}

fn int(i: i64) -> Value {
    Value::int(i, Span::unknown())
}

fn events(first_seq: u64, bodies: Vec<EventBody>) -> HostMessage {
    HostMessage::Events(
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event {
                seq: first_seq + i as u64,
                body,
            })
            .collect(),
    )
}

/// `Started`, `count` ints, `Finished` of `call_id`.
fn run_of(call_id: u64, count: i64) -> Vec<EventBody> {
    let mut bodies = vec![EventBody::Started {
        call_id,
        stream: true,
        bytes: None,
    }];
    bodies.extend((1..=count).map(|i| EventBody::Value {
        call_id,
        value: int(i),
    }));
    bodies.push(EventBody::Finished {
        call_id,
        error: None,
    });
    bodies
}

fn invoked(message: &ClientMessage) -> bool {
    matches!(message, ClientMessage::Invoke(_))
}

fn call_id_of(message: ClientMessage) -> u64 {
    match message {
        ClientMessage::Invoke(invocation) => invocation.call_id,
        other => panic!("not an invocation: {other:?}"),
    }
}

/// Every event of a call, until `Finished`.
fn drain(call: &mut super::Call) -> Vec<CallEvent> {
    let mut all = Vec::new();
    loop {
        let event = call.next_event().expect("an event");
        let done = matches!(event, CallEvent::Finished(_));
        all.push(event);
        if done {
            return all;
        }
    }
}

fn ints(events: &[CallEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::Value(v) => v.as_int().ok(),
            _ => None,
        })
        .collect()
}

#[test]
fn events_reach_their_call_and_others_go_to_the_backlog() {
    let fx = Fixture::new();
    // Another client's invocation 7 was running when this one attached.
    let (handle, mut end) = fx.attach(fx.attachment(vec![7]));
    let mut call = handle.invoke("seq 1 3".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    assert_eq!(id, call.id());
    // Interleaved: the other invocation's output, then ours, in one message.
    let mut bodies = run_of(7, 2);
    bodies.extend(run_of(id, 3));
    fx.send(&mut end, events(1, bodies));
    let ours = drain(&mut call);
    assert!(matches!(ours[0], CallEvent::Started { stream: true, .. }));
    assert_eq!(ints(&ours), [1, 2, 3]);
    assert!(matches!(ours.last(), Some(CallEvent::Finished(None))));
    // The other invocation's events wait for receive, with its id, and then it is done.
    let mut receive = handle.receive().unwrap();
    let mut theirs = Vec::new();
    while let Some((call_id, event)) = receive.next_event().unwrap() {
        assert_eq!(call_id, Some(7));
        theirs.push(event);
    }
    assert_eq!(ints(&theirs), [1, 2]);
    assert!(matches!(theirs.last(), Some(CallEvent::Finished(None))));
}

#[test]
fn what_was_consumed_is_acknowledged_and_nothing_before() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("seq".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    // 500 values in one message: nothing is acknowledged before the user took them.
    fx.send(&mut end, events(1, run_of(id, 500)));
    assert_eq!(fx.last_ack(&mut end, Some(id)), None);
    for _ in 0..300 {
        call.next_event().unwrap();
    }
    // Not the end: still nothing (the engine may not have the values yet, and a quarter of
    // the window was not consumed).
    assert_eq!(fx.last_ack(&mut end, Some(id)), None);
    let rest = drain(&mut call);
    assert_eq!(rest.len(), 502 - 300);
    // The end: everything up to the last event.
    assert_eq!(fx.last_ack(&mut end, Some(id)), Some((502, None)));
}

#[test]
fn an_abandoned_call_is_interrupted_and_its_output_discarded() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let call = handle.invoke("sleep 1hr".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    drop(call);
    let interrupt = fx.expect(&mut end, |m| matches!(m, ClientMessage::Interrupt { .. }));
    assert!(matches!(interrupt, ClientMessage::Interrupt { call_id } if call_id == id));
    // Its events are discarded, not kept for receive, and acknowledged.
    fx.send(&mut end, events(1, run_of(id, 2)));
    assert_eq!(fx.last_ack(&mut end, Some(id)), Some((4, None)));
    let mut receive = handle.receive().unwrap();
    assert!(receive.next_event().unwrap().is_none());
}

#[test]
fn a_broken_connection_resumes_after_the_last_event_and_sends_again_what_was_missed() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut watch = handle.watch_link();
    // The session's socket, where reattaching looks for it.
    let listener = {
        let _guard = fx.runtime.enter();
        UnixListener::bind(fx.layout.session_socket(fx.instance_id)).unwrap()
    };
    let mut call = handle.invoke("seq 1 4".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(
        &mut end,
        events(
            1,
            vec![
                EventBody::Started {
                    call_id: id,
                    stream: true,
                    bytes: None,
                },
                EventBody::Value {
                    call_id: id,
                    value: int(1),
                },
            ],
        ),
    );
    assert!(matches!(
        call.next_event().unwrap(),
        CallEvent::Started { .. }
    ));
    assert_eq!(ints(&[call.next_event().unwrap()]), [1]);
    // A second invocation the host never gets: the connection breaks first.
    let second = handle.invoke("'second'".into(), Vec::new(), None).unwrap();
    drop(end);
    assert!(watch.wait_until(|s| s.breaks == 1));
    // The client comes back to the session's socket: hello, then attach after event 2.
    let mut end = fx.runtime.block_on(async {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("no reattach")
            .unwrap();
        Framed::new(stream, FrameCodec::new())
    });
    let hello = fx.expect(&mut end, |_| true);
    assert!(matches!(hello, ClientMessage::Hello(_)));
    fx.send(&mut end, HostMessage::Hello(Hello::current()));
    let attach = fx.expect(&mut end, |_| true);
    // It says what it has of the invocation, so that only the rest comes.
    match &attach {
        ClientMessage::Attach { resume, .. } => {
            assert!(
                resume.contains(&Received {
                    call_id: id,
                    seq: 2
                }),
                "{attach:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The host has the first invocation (it sent events of it), not the second.
    let mut attachment = fx.attachment(vec![id]);
    attachment.last_call_from_client = Some(id);
    fx.send(&mut end, HostMessage::Attached(attachment));
    let again = call_id_of(fx.expect(&mut end, invoked));
    assert_eq!(again, second.id());
    assert!(watch.wait_until(|s| s.link == Link::Up));
    // The output goes on where it stopped.
    let mut rest = run_of(id, 4);
    rest.drain(..2);
    fx.send(&mut end, events(3, rest));
    assert_eq!(ints(&drain(&mut call)), [2, 3, 4]);
    assert_eq!(handle.breaks(), 1);
}

#[test]
fn the_sessions_end_is_said_once_and_ends_what_waits() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("exit".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    let waiting = handle.invoke("'queued'".into(), Vec::new(), None).unwrap();
    let error = RemoteError::new(
        ErrorKind::Ended,
        "the session ended: its code called exit (code 0)",
    );
    fx.send(
        &mut end,
        events(
            1,
            vec![EventBody::Finished {
                call_id: id,
                error: Some(error),
            }],
        ),
    );
    let events = drain(&mut call);
    assert!(matches!(&events[..], [CallEvent::Finished(Some(e))] if e.kind == ErrorKind::Ended));
    assert!(handle.has_ended());
    assert_eq!(
        handle.end_reason().as_deref(),
        Some("its code called exit (code 0)")
    );
    // The worker is gone: the connection closes, and the queued call ends with the reason.
    drop(end);
    let mut waiting = waiting;
    match waiting.next_event().unwrap() {
        CallEvent::Finished(Some(e)) => {
            assert_eq!(e.kind, ErrorKind::Ended);
            assert_eq!(
                e.msg,
                "the session has ended: its code called exit (code 0)"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing more can be sent, and it says why.
    let Err(error) = handle.invoke("1".into(), Vec::new(), None) else {
        panic!("an ended session took an invocation");
    };
    assert!(error.to_string().contains("has ended"), "{error}");
    assert_eq!(handle.breaks(), 0);
}

#[test]
fn repeated_zero_and_backward_sequence_numbers_are_delivered_once_and_never_panic() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("seq 1 3".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    let value = |seq, i| Event {
        seq,
        body: EventBody::Value {
            call_id: id,
            value: int(i),
        },
    };
    let started = Event {
        seq: 1,
        body: EventBody::Started {
            call_id: id,
            stream: true,
            bytes: None,
        },
    };
    // A broken host: a 0, a repeat in one message, a repeat of an earlier message, a step back.
    fx.send(&mut end, HostMessage::Events(vec![value(0, 0)]));
    fx.send(
        &mut end,
        HostMessage::Events(vec![started.clone(), value(2, 1), value(2, 1)]),
    );
    fx.send(&mut end, HostMessage::Events(vec![started, value(3, 2)]));
    fx.send(
        &mut end,
        HostMessage::Events(vec![value(1, 9), value(4, 3)]),
    );
    fx.send(
        &mut end,
        HostMessage::Events(vec![Event {
            seq: 5,
            body: EventBody::Finished {
                call_id: id,
                error: None,
            },
        }]),
    );
    let events = drain(&mut call);
    assert_eq!(ints(&events), [1, 2, 3]);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, CallEvent::Started { .. }))
            .count(),
        1
    );
    drop(call);
    assert_eq!(fx.last_ack(&mut end, Some(id)), Some((5, None)));
}

#[test]
fn concurrent_invocations_reach_the_host_in_the_order_of_their_ids() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let threads = 8;
    let each = 200;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let handle = handle.clone();
            scope.spawn(move || {
                for _ in 0..each {
                    // The host ignores an id not above the last it saw (a resend after a
                    // reconnect): one sent out of order would be lost, its call never ending.
                    handle
                        .invoke_detached("1".into(), Vec::new(), None)
                        .unwrap();
                }
            });
        }
    });
    let mut last = 0;
    for _ in 0..threads * each {
        let id = call_id_of(fx.expect(&mut end, invoked));
        assert!(id > last, "invocation {id} arrived after {last}");
        last = id;
    }
}

#[test]
fn unread_output_of_another_invocation_holds_back_none_of_ours() {
    let fx = Fixture::new();
    // Invocation 7 ran while nobody was connected; its output waits for receive-session.
    let (handle, mut end) = fx.attach(fx.attachment(vec![7]));
    let mut bodies = run_of(7, 3);
    bodies.pop();
    fx.send(&mut end, events(1, bodies));
    let mut call = handle.invoke("seq 1 3".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(&mut end, events(5, run_of(id, 3)));
    assert_eq!(ints(&drain(&mut call)), [1, 2, 3]);
    drop(call);
    // Ours is acknowledged, the backlog is not.
    let acks = fx.acks(&mut end);
    assert_eq!(
        acks,
        [Ack {
            call_id: Some(id),
            seq: 9,
            part: None
        }]
    );
}

#[test]
fn a_flood_for_an_invocation_nobody_started_is_not_kept() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    // A host floods 200 MiB of output for an invocation nobody started, one MiB per event.
    let mib = Value::string("x".repeat(1 << 20), Span::unknown());
    for seq in 1..=200 {
        let body = EventBody::Value {
            call_id: 999,
            value: mib.clone(),
        };
        fx.send(&mut end, events(seq, vec![body]));
    }
    // Our own invocation still gets its answer.
    let mut call = handle.invoke("6 * 7".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(&mut end, events(201, run_of(id, 1)));
    assert_eq!(ints(&drain(&mut call)), [1]);
    drop(call);
    // Nothing of it was kept, nor acknowledged: it stays on the host.
    let mut receive = handle.receive().unwrap();
    assert!(receive.next_event().unwrap().is_none());
    drop(receive);
    assert!(
        fx.acks(&mut end).iter().all(|a| a.call_id == Some(id)),
        "acknowledged output of an invocation nobody started"
    );
}

#[test]
fn a_host_that_sends_past_the_window_is_cut_off() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("1".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    let started = EventBody::Started {
        call_id: id,
        stream: false,
        bytes: None,
    };
    fx.send(&mut end, events(1, vec![started]));
    let mib = Value::string("x".repeat(1 << 20), Span::unknown());
    let past = super::WINDOW / (1 << 20) as usize + 4;
    for seq in 2..2 + past as u64 {
        let body = EventBody::Value {
            call_id: id,
            value: mib.clone(),
        };
        if fx
            .runtime
            .block_on(end.send(events(seq, vec![body])))
            .is_err()
        {
            break;
        }
    }
    assert!(matches!(
        call.next_event().unwrap(),
        CallEvent::Started { .. }
    ));
    // The values within the window come; then the connection is refused, saying why.
    let mut error = None;
    for _ in 0..past {
        match call.next_event() {
            Ok(CallEvent::Value(_)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let error = error.expect("the call ended");
    assert!(error.contains("more output"), "{error}");
    assert!(!handle.is_alive());
}

#[test]
fn a_receive_that_stops_early_leaves_the_rest_for_the_next() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(vec![7]));
    let started = EventBody::Started {
        call_id: 7,
        stream: true,
        bytes: None,
    };
    let group = EventBody::Values {
        call_id: 7,
        first: 0,
        values: (1..=50).map(int).collect(),
    };
    let finished = EventBody::Finished {
        call_id: 7,
        error: None,
    };
    fx.send(&mut end, events(1, vec![started, group, finished]));
    let mut receive = handle.receive().unwrap();
    let mut took = Vec::new();
    while took.len() < 3 {
        match receive.next_event().unwrap() {
            Some((_, CallEvent::Value(v))) => took.push(v.as_int().unwrap()),
            Some(_) => {}
            None => panic!("ended early"),
        }
    }
    drop(receive);
    assert_eq!(took, [1, 2, 3]);
    // Three handed on: acknowledged inside the group.
    assert_eq!(fx.last_ack(&mut end, Some(7)), Some((2, Some(3))));
    let mut receive = handle.receive().unwrap();
    let mut rest = Vec::new();
    while let Some((_, event)) = receive.next_event().unwrap() {
        rest.push(event);
    }
    assert_eq!(ints(&rest), (4..=50).collect::<Vec<_>>());
    drop(receive);
    assert_eq!(fx.last_ack(&mut end, Some(7)), Some((3, None)));
}

#[test]
fn a_call_that_holds_its_values_asks_for_a_larger_window() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("1..10".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    call.defer_acks(true);
    let asked = fx.expect(&mut end, |m| matches!(m, ClientMessage::Window { .. }));
    assert!(
        matches!(asked, ClientMessage::Window { call_id, window } if call_id == id && window == super::HELD_WINDOW as u64),
        "{asked:?}"
    );
    call.defer_acks(false);
    let back = fx.expect(&mut end, |m| matches!(m, ClientMessage::Window { .. }));
    assert!(
        matches!(back, ClientMessage::Window { window, .. } if window == super::WINDOW as u64),
        "{back:?}"
    );
}

#[test]
fn what_a_background_job_prints_between_invocations_is_shown_by_the_next() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let printed = |seq: u64, text: &str| {
        events(
            seq,
            vec![EventBody::Output {
                call_id: None,
                stderr: false,
                bytes: text.as_bytes().to_vec(),
            }],
        )
    };
    fx.send(&mut end, printed(1, "from the job\n"));
    // It is acknowledged (nothing holds it on the host) and kept for the next invocation.
    assert_eq!(fx.last_ack(&mut end, None), Some((1, None)));
    let mut call = handle.invoke("1".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(&mut end, events(2, run_of(id, 1)));
    let all = drain(&mut call);
    assert!(
        matches!(&all[0], CallEvent::Output { stderr: false, bytes } if bytes == b"from the job\n"),
        "{all:?}"
    );
    assert_eq!(ints(&all), [1]);
    drop(call);
    // With no invocation to come, a receive shows it.
    fx.send(&mut end, printed(5, "later\n"));
    assert_eq!(fx.last_ack(&mut end, None), Some((5, None)));
    let mut receive = handle.receive().unwrap();
    let first = receive.next_event().unwrap();
    assert!(
        matches!(&first, Some((None, CallEvent::Output { bytes, .. })) if bytes == b"later\n"),
        "{first:?}"
    );
}

#[test]
fn output_between_invocations_is_acknowledged_at_once_behind_an_unread_backlog() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(vec![7]));
    // Invocation 7's output waits for a receive; then the session prints on its own.
    let mut bodies = run_of(7, 2);
    bodies.pop();
    fx.send(&mut end, events(1, bodies));
    let printed = EventBody::Output {
        call_id: None,
        stderr: true,
        bytes: b"job\n".to_vec(),
    };
    fx.send(&mut end, events(4, vec![printed]));
    // Kept here, so forgotten there: a reconnect must not bring it back to be shown twice.
    assert_eq!(
        fx.acks(&mut end),
        [Ack {
            call_id: None,
            seq: 4,
            part: None
        }]
    );
    drop(handle);
}

#[test]
fn an_interrupt_the_session_does_not_honour_still_ends_the_call() {
    let fx = Fixture::new();
    let (handle, mut end) = fx.attach(fx.attachment(Vec::new()));
    let mut call = handle.invoke("loop {}".into(), Vec::new(), None).unwrap();
    let id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(
        &mut end,
        events(
            1,
            vec![EventBody::Started {
                call_id: id,
                stream: true,
                bytes: None,
            }],
        ),
    );
    assert!(matches!(
        call.next_event().unwrap(),
        CallEvent::Started { .. }
    ));
    let asked = std::time::Instant::now();
    call.interrupt();
    // The host is told, and says nothing.
    fx.expect(
        &mut end,
        |m| matches!(m, ClientMessage::Interrupt { call_id } if *call_id == id),
    );
    match call.next_event().unwrap() {
        CallEvent::Finished(Some(error)) => {
            assert_eq!(error.kind, ErrorKind::Interrupted);
            assert!(error.msg.contains("did not stop"), "{}", error.msg);
        }
        other => panic!("{other:?}"),
    }
    let waited = asked.elapsed();
    assert!(
        waited >= super::STOP_GRACE && waited < super::STOP_GRACE * 2,
        "{waited:?}"
    );
    drop(call);
    // Its late end and output are discarded; the session goes on.
    let mut bodies = vec![EventBody::Value {
        call_id: id,
        value: int(1),
    }];
    bodies.push(EventBody::Finished {
        call_id: id,
        error: None,
    });
    fx.send(&mut end, events(2, bodies));
    let mut next = handle.invoke("1".into(), Vec::new(), None).unwrap();
    let next_id = call_id_of(fx.expect(&mut end, invoked));
    fx.send(&mut end, events(4, run_of(next_id, 1)));
    assert_eq!(ints(&drain(&mut next)), [1]);
}
