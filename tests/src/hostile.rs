//! [`HostileHost`]: a host played by the test, speaking nu-session's protocol (the real codec) on
//! the sockets of this machine's runtime directory, where the real manager and workers would
//! listen, and breaking it on purpose. The plugin under test connects to it as to any host.
//!
//! A session's name picks what its worker does with the first invocation ([`Scenario`]); later
//! invocations are answered `42`. The manager lists every session with an idle timeout too
//! large for any date.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use nu_protocol::{Span, Value};
use nu_session_protocol::layout::Layout;
use nu_session_protocol::{
    Attachment, ClientMessage, ErrorKind, Event, EventBody, FrameCodec, Hello, HostMessage,
    Invocation, OutputBuffering, RemoteError, RemoteLabel, SessionInfo,
};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

/// What a session's worker does with its first invocation, by the session's name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    /// Sequence numbers 0, repeats, and up to `u64::MAX`: `[1, 2]` delivered once each.
    Seqs,
    /// An error whose labels' spans are inverted or far outside the code.
    Spans,
    /// An error whose message and help hold terminal escape sequences.
    Escapes,
    /// 400 MiB of output for an invocation nobody started (call id 999999), then `42`.
    Flood,
    /// 400 MiB of output for the invocation itself, sent whatever the client's window says.
    Overflow,
    /// Started and one value, then the connection closes and the session is gone: no
    /// `Finished` ever.
    Vanish,
    /// A frame header announcing more than is ever sent, then the connection closes and the
    /// session is gone.
    Truncated,
    /// Started (one value to come), then nothing, whatever the client says (interrupts
    /// included).
    Deaf,
    /// Answers `42`.
    Plain,
}

impl Scenario {
    fn of(name: &str) -> Scenario {
        match name {
            "seqs" => Scenario::Seqs,
            "spans" => Scenario::Spans,
            "escapes" => Scenario::Escapes,
            "flood" => Scenario::Flood,
            "overflow" => Scenario::Overflow,
            "vanish" => Scenario::Vanish,
            "truncated" => Scenario::Truncated,
            "deaf" => Scenario::Deaf,
            _ => Scenario::Plain,
        }
    }
}

/// The text of the [`Scenario::Escapes`] error: a title change, a screen clear, a colour.
pub const ESCAPES: &str = "evil\u{1b}]0;owned\u{7}\u{1b}[2Jend";
/// What the manager says of a session that is gone.
pub const GONE: &str = "the hostile host dropped it";

#[derive(Default)]
struct World {
    sessions: HashMap<Uuid, SessionInfo>,
    gone: Vec<Uuid>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct HostileHost {
    world: Arc<Mutex<World>>,
}

type Codec = FrameCodec<ClientMessage, HostMessage>;

struct Conn {
    stream: UnixStream,
    codec: Codec,
    buffer: BytesMut,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            codec: FrameCodec::new(),
            buffer: BytesMut::new(),
        }
    }

    fn next(&mut self) -> Option<ClientMessage> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(_) => return None,
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn send(&mut self, message: HostMessage) -> bool {
        let mut out = BytesMut::new();
        if self.codec.encode(message, &mut out).is_err() {
            return false;
        }
        self.stream.write_all(&out).is_ok()
    }
}

fn info(id: Uuid, name: &str) -> SessionInfo {
    SessionInfo {
        instance_id: id,
        name: name.to_string(),
        configuration_name: "nu".into(),
        user: "hostile".into(),
        created: chrono::Utc::now(),
        // Too large for any date: an expiry computed from it must not overflow.
        idle_timeout: Duration::from_secs(u64::MAX),
        output_buffering: OutputBuffering::Block,
        attached: false,
        attached_client: None,
        running: false,
        disconnected_on: None,
    }
}

fn events(first: u64, bodies: Vec<EventBody>) -> HostMessage {
    HostMessage::Events(
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event {
                seq: first + i as u64,
                body,
            })
            .collect(),
    )
}

fn answer(call_id: u64) -> Vec<EventBody> {
    vec![
        EventBody::Started {
            call_id,
            stream: false,
            bytes: None,
        },
        EventBody::Value {
            call_id,
            value: Value::int(42, Span::unknown()),
        },
        EventBody::Finished {
            call_id,
            error: None,
        },
    ]
}

impl HostileHost {
    /// Listens where this machine's manager would for `layout`.
    pub fn start(layout: &Layout) -> HostileHost {
        layout.ensure_private().expect("runtime directory");
        std::fs::create_dir_all(layout.sessions_dir()).expect("sessions dir");
        let listener = UnixListener::bind(layout.manager_socket()).expect("manager socket");
        let world = Arc::new(Mutex::new(World::default()));
        let host = HostileHost {
            world: world.clone(),
        };
        let layout = layout.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (world, layout) = (world.clone(), layout.clone());
                std::thread::spawn(move || manager(Conn::new(stream), &world, &layout));
            }
        });
        host
    }

    /// How many sessions were made.
    pub fn sessions(&self) -> usize {
        lock(&self.world).sessions.len()
    }
}

fn manager(mut conn: Conn, world: &Arc<Mutex<World>>, layout: &Layout) {
    while let Some(message) = conn.next() {
        let reply = match message {
            ClientMessage::Hello(_) => HostMessage::Hello(Hello::current()),
            ClientMessage::CreateSession(settings) => {
                let id = Uuid::new_v4();
                let info = info(id, &settings.name);
                lock(world).sessions.insert(id, info.clone());
                let listener =
                    UnixListener::bind(layout.session_socket(id)).expect("session socket");
                let world = world.clone();
                let scenario = Scenario::of(&settings.name);
                std::thread::spawn(move || {
                    let first = Arc::new(Mutex::new(true));
                    for stream in listener.incoming().flatten() {
                        let (world, first) = (world.clone(), first.clone());
                        std::thread::spawn(move || {
                            worker(Conn::new(stream), &world, id, scenario, &first)
                        });
                    }
                });
                HostMessage::Created(info)
            }
            ClientMessage::ListSessions => {
                let world = lock(world);
                HostMessage::Sessions(
                    world
                        .sessions
                        .values()
                        .filter(|s| !world.gone.contains(&s.instance_id))
                        .cloned()
                        .collect(),
                )
            }
            ClientMessage::EndReason { instance_id } => HostMessage::EndReason {
                instance_id,
                reason: Some(GONE.to_string()),
            },
            ClientMessage::RemoveSession { instance_id } => {
                lock(world).gone.push(instance_id);
                HostMessage::Removed { instance_id }
            }
            other => HostMessage::Error(RemoteError::new(
                ErrorKind::BadRequest,
                format!("not here: {other:?}"),
            )),
        };
        if !conn.send(reply) {
            return;
        }
    }
}

fn worker(
    mut conn: Conn,
    world: &Arc<Mutex<World>>,
    id: Uuid,
    scenario: Scenario,
    first: &Mutex<bool>,
) {
    let mut next_seq = 1;
    while let Some(message) = conn.next() {
        let reply = match message {
            ClientMessage::Hello(_) => HostMessage::Hello(Hello::current()),
            ClientMessage::Attach { .. } if lock(world).gone.contains(&id) => {
                HostMessage::Error(RemoteError::new(ErrorKind::NotFound, "no such session"))
            }
            ClientMessage::Attach { .. } => {
                let info = lock(world).sessions[&id].clone();
                HostMessage::Attached(Attachment {
                    info,
                    pending_calls: Vec::new(),
                    kept: Vec::new(),
                    last_call_from_client: None,
                    heartbeat: Duration::from_secs(3600),
                })
            }
            ClientMessage::Invoke(Invocation { call_id, .. }) => {
                let first_time = std::mem::replace(&mut *lock(first), false);
                let scenario = if first_time {
                    scenario
                } else {
                    Scenario::Plain
                };
                match play(&mut conn, world, id, scenario, call_id, &mut next_seq) {
                    Some(reply) => reply,
                    None => return,
                }
            }
            // Acknowledgements, pings, interrupts: nothing to say.
            _ => continue,
        };
        if !conn.send(reply) {
            return;
        }
    }
}

/// Plays `scenario` for invocation `call_id`: its last message, or `None` when the connection
/// is to close.
fn play(
    conn: &mut Conn,
    world: &Arc<Mutex<World>>,
    id: Uuid,
    scenario: Scenario,
    call_id: u64,
    next_seq: &mut u64,
) -> Option<HostMessage> {
    let value = |i: i64| EventBody::Value {
        call_id,
        value: Value::int(i, Span::unknown()),
    };
    let started = EventBody::Started {
        call_id,
        stream: true,
        bytes: None,
    };
    let failed = |error: RemoteError| EventBody::Finished {
        call_id,
        error: Some(error),
    };
    let seq = *next_seq;
    Some(match scenario {
        Scenario::Plain => {
            *next_seq += 3;
            events(seq, answer(call_id))
        }
        Scenario::Seqs => {
            let at = |seq: u64, body: EventBody| Event { seq, body };
            HostMessage::Events(vec![
                at(0, value(-1)),
                at(1, started.clone()),
                at(1, started),
                at(2, value(1)),
                at(2, value(99)),
                at(1, value(98)),
                at(u64::MAX - 1, value(2)),
                at(
                    u64::MAX,
                    EventBody::Finished {
                        call_id,
                        error: None,
                    },
                ),
                at(u64::MAX, value(97)),
            ])
        }
        Scenario::Spans => {
            *next_seq += 2;
            let mut error = RemoteError::new(ErrorKind::Failed, "bad spans");
            for span in [(50, 10), (0, usize::MAX), (usize::MAX - 1, usize::MAX)] {
                error.labels.push(RemoteLabel {
                    text: "here".into(),
                    span: Some(span),
                });
            }
            events(seq, vec![started, failed(error)])
        }
        Scenario::Escapes => {
            *next_seq += 2;
            let error = RemoteError::new(ErrorKind::Failed, ESCAPES).with_help("\u{1b}[31mred");
            events(seq, vec![started, failed(error)])
        }
        Scenario::Flood => {
            let mib = Value::string("x".repeat(1 << 20), Span::unknown());
            let mut seq = seq;
            if !conn.send(events(seq, vec![started])) {
                return None;
            }
            seq += 1;
            for _ in 0..400 {
                let body = EventBody::Value {
                    call_id: 999_999,
                    value: mib.clone(),
                };
                if !conn.send(events(seq, vec![body])) {
                    return None;
                }
                seq += 1;
            }
            *next_seq = seq + 2;
            events(
                seq,
                vec![
                    value(42),
                    EventBody::Finished {
                        call_id,
                        error: None,
                    },
                ],
            )
        }
        Scenario::Overflow => {
            // One value to come (so the client holds nothing back on purpose), and then 400.
            let mib = Value::string("x".repeat(1 << 20), Span::unknown());
            let started = EventBody::Started {
                call_id,
                stream: false,
                bytes: None,
            };
            if !conn.send(events(seq, vec![started])) {
                return None;
            }
            for n in 1..=400 {
                let body = EventBody::Value {
                    call_id,
                    value: mib.clone(),
                };
                if !conn.send(events(seq + n, vec![body])) {
                    return None;
                }
            }
            *next_seq = seq + 401;
            return None;
        }
        Scenario::Deaf => {
            // One value to come (not a stream nu could stop reading by itself).
            *next_seq += 1;
            events(
                seq,
                vec![EventBody::Started {
                    call_id,
                    stream: false,
                    bytes: None,
                }],
            )
        }
        Scenario::Vanish => {
            conn.send(events(seq, vec![started, value(1)]));
            lock(world).gone.push(id);
            return None;
        }
        Scenario::Truncated => {
            lock(world).gone.push(id);
            // A header for 1000 bytes, and ten of them.
            let mut bytes = 1000u32.to_be_bytes().to_vec();
            bytes.extend([0x92; 10]);
            let _ = conn.stream.write_all(&bytes);
            return None;
        }
    })
}
