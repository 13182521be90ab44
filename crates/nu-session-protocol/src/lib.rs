//! The contract between nu-session clients and hosts: what crosses the wire and where the host
//! keeps its sockets.
//!
//! Layout:
//! - [`message`]: the messages, [`ClientMessage`] (client → host) and [`HostMessage`]
//!   (host → client), and the types they carry ([`SessionInfo`], [`Event`], [`RemoteError`]).
//! - [`codec`]: length-prefixed MessagePack frames, as a `tokio_util` codec and as blocking
//!   `read_frame`/`write_frame`, both over one encoding with one size limit.
//! - [`layout`]: the per-user runtime directory (private, owner-checked) and the socket paths in it.
//!
//! This crate does no I/O beyond reading and writing frames and checking the runtime directory.

pub mod codec;
pub mod layout;
pub mod message;
pub mod value;

pub use codec::{
    DEFAULT_MAX_MESSAGE_LEN, EncodedEvent, FrameCodec, MAX_FRAME_LEN, MORE, ProtocolError,
    READ_LIMIT, decode_payload, encode_frame, events_frame, frame_payload, human_bytes,
    max_message_len, read_frame, set_max_message_len, write_frame,
};
pub use message::*;

/// Bumped on any incompatible change to [`message`]; the hello exchange refuses a mismatch.
pub const PROTOCOL_VERSION: u32 = 7;

/// Written by `nu-session-host connect` before relaying: clients skip whatever a login shell
/// printed up to this marker.
pub const RELAY_PREAMBLE: &[u8] = b"\0nu-session-host\0";

/// Written by `nu-session-host connect` on stdout, instead of the preamble, before why it could
/// not start (the runtime directory is unsafe, the manager did not start).
pub const RELAY_FAILED: &str = "nu-session-host failed: ";

/// This build's version, reported in the hello so mismatches can be explained to the user.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `nu-session-host --version` prints: clients compare it with their own to decide whether
/// a host program they find can serve them.
pub fn version_line() -> String {
    format!("nu-session-host {SOFTWARE_VERSION} (protocol {PROTOCOL_VERSION})")
}
