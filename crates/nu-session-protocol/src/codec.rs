//! Frames: a 4-byte big-endian length, then that many bytes of MessagePack (named fields).
//!
//! A message longer than [`MAX_FRAME_LEN`] is sent as several frames, each but the last with
//! the length's top bit ([`MORE`]) set; the reader joins them. A sender refuses to write a
//! message longer than [`max_message_len`] (1 GiB unless [`set_max_message_len`] says
//! otherwise, from the host's config or the client's `NU_SESSION_MAX_MESSAGE_BYTES`), with an
//! error naming both sizes; a reader refuses one longer than [`READ_LIMIT`] before reading it.
//! The reader's bound is fixed, not configured: a message one side may send, the other always
//! takes (two configurations must never make a session resend what its client refuses).
//!
//! One encoding, two faces: [`FrameCodec`] for `tokio_util::codec::Framed` (the client) and
//! [`read_frame`]/[`write_frame`] for blocking sockets (the host). A frame longer than
//! [`MAX_FRAME_LEN`], a message over the limit, or one that does not decode as the expected
//! message, is an error; callers close that connection and carry on.

use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

/// The longest frame either side accepts or sends: 16 MiB. Longer messages go in pieces.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Set in a frame's length when more pieces of the same message follow.
pub const MORE: u32 = 1 << 31;

/// The default limit of one message (a value, an invocation with its input): 1 GiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 30;

/// The longest message a reader takes: 4 GiB, the most [`set_max_message_len`] allows.
pub const READ_LIMIT: usize = 4 << 30;

static MAX_MESSAGE_LEN: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_MESSAGE_LEN);

/// The longest message this process sends or accepts.
pub fn max_message_len() -> usize {
    MAX_MESSAGE_LEN.load(Ordering::Relaxed)
}

/// Sets [`max_message_len`] (at least one frame, at most [`READ_LIMIT`]).
pub fn set_max_message_len(len: usize) {
    MAX_MESSAGE_LEN.store(len.clamp(MAX_FRAME_LEN, READ_LIMIT), Ordering::Relaxed);
}

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "a message of {} exceeds the limit of {}",
        human_bytes(*len),
        human_bytes(*limit)
    )]
    Oversize { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `1.5 GiB`, `80.0 MiB`, `512 bytes`.
pub fn human_bytes(len: usize) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if len < 1024 {
        return format!("{len} bytes");
    }
    let mut size = len as f64 / 1024.0;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Encodes one message as complete frames (headers included): one frame, or several pieces
/// when it is longer than [`MAX_FRAME_LEN`].
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; HEADER_LEN];
    rmp_serde::encode::write_named(&mut buf, message)
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    frame_payload(buf)
}

/// Frames a payload written after [`HEADER_LEN`] bytes of room at the start of `buf`.
pub fn frame_payload(mut buf: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
    let len = buf.len() - HEADER_LEN;
    let limit = max_message_len();
    if len > limit {
        return Err(ProtocolError::Oversize { len, limit });
    }
    if len <= MAX_FRAME_LEN {
        buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        return Ok(buf);
    }
    let payload = &buf[HEADER_LEN..];
    let pieces = len.div_ceil(MAX_FRAME_LEN);
    let mut out = Vec::with_capacity(len + pieces * HEADER_LEN);
    for (n, piece) in payload.chunks(MAX_FRAME_LEN).enumerate() {
        let more = if n + 1 < pieces { MORE } else { 0 };
        out.extend_from_slice(&(piece.len() as u32 | more).to_be_bytes());
        out.extend_from_slice(piece);
    }
    Ok(out)
}

/// Decodes a message's payload (headers removed, pieces joined).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    rmp_serde::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// A frame's length and whether more pieces follow; an error past the limits (`so_far`: the
/// message's bytes before this piece; `limit`: [`READ_LIMIT`] but in tests).
fn checked_len(
    header: [u8; HEADER_LEN],
    so_far: usize,
    limit: usize,
) -> Result<(usize, bool), ProtocolError> {
    let raw = u32::from_be_bytes(header);
    let more = raw & MORE != 0;
    let len = (raw & !MORE) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::Oversize {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    if so_far + len > limit {
        return Err(ProtocolError::Oversize {
            len: so_far + len,
            limit,
        });
    }
    Ok((len, more))
}

/// Reads one message. `Ok(None)` means the peer closed the connection between messages.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, ProtocolError> {
    read_limited(reader, READ_LIMIT)
}

fn read_limited<T: DeserializeOwned>(
    reader: &mut impl Read,
    limit: usize,
) -> Result<Option<T>, ProtocolError> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match reader.read(&mut header[filled..]) {
                Ok(0) if filled == 0 && payload.is_empty() => return Ok(None),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (len, more) = checked_len(header, payload.len(), limit)?;
        let start = payload.len();
        payload.resize(start + len, 0);
        reader.read_exact(&mut payload[start..])?;
        if !more {
            return decode_payload(&payload).map(Some);
        }
    }
}

/// Writes one message and flushes.
pub fn write_frame<T: Serialize>(
    writer: &mut impl Write,
    message: &T,
) -> Result<(), ProtocolError> {
    writer.write_all(&encode_frame(message)?)?;
    writer.flush()?;
    Ok(())
}

/// Room kept before an encoded body for its event's header (`[seq, body]`).
const EVENT_HEAD: usize = 1 + 9;

/// Refuses an event body (or a value in a group) of `len` bytes that could not be sent: with
/// its event's header and a batch's (well within 64 bytes) it would be over the limit.
pub fn fits_in_a_message(len: usize) -> Result<(), ProtocolError> {
    let (len, limit) = (len + 64, max_message_len());
    if len > limit {
        return Err(ProtocolError::Oversize { len, limit });
    }
    Ok(())
}

/// One [`crate::Event`] encoded once, by its producer: its body is encoded first (before it
/// has a sequence number, outside any lock), its header written in front when it is numbered.
/// Batches of them are laid end to end by [`events_frame`], replays send the same bytes again.
pub struct EncodedEvent {
    start: usize,
    bytes: Vec<u8>,
}

impl EncodedEvent {
    /// Encodes `body`; an error if the event could not fit in a message.
    pub fn new(body: &crate::EventBody) -> Result<EncodedEvent, ProtocolError> {
        let mut bytes = vec![0u8; EVENT_HEAD];
        // Compact (structs as arrays): an event is mostly its envelope when its value is small,
        // and field names are the most of it to write and to read.
        rmp_serde::encode::write(&mut bytes, body)
            .map_err(|e| ProtocolError::Encode(e.to_string()))?;
        fits_in_a_message(bytes.len() - EVENT_HEAD)?;
        Ok(EncodedEvent {
            start: EVENT_HEAD,
            bytes,
        })
    }

    /// A [`crate::EventBody::Values`] event of `count` values encoded one after the other
    /// (each by [`crate::value::encode`]) in `values`, numbered `seq`; `first` is the index of
    /// the first of them in the group as made.
    pub fn values(seq: u64, call_id: u64, first: u32, count: usize, values: &[u8]) -> EncodedEvent {
        let mut bytes = Vec::with_capacity(EVENT_HEAD + 32 + values.len());
        bytes.resize(EVENT_HEAD, 0);
        // As serde writes the struct variant compact: {"Values": [call_id, first, [value, ...]]}.
        bytes.push(0x81);
        let _ = rmp::encode::write_str(&mut bytes, "Values");
        bytes.push(0x93);
        let _ = rmp::encode::write_uint(&mut bytes, call_id);
        let _ = rmp::encode::write_uint(&mut bytes, u64::from(first));
        let _ = rmp::encode::write_array_len(&mut bytes, count as u32);
        bytes.extend_from_slice(values);
        let mut event = EncodedEvent {
            start: EVENT_HEAD,
            bytes,
        };
        event.set_seq(seq);
        event
    }

    /// This group of values (made by [`EncodedEvent::values`]) without the values before the
    /// index `from` (counted as `first` counts): what is left when a consumer took only part
    /// of the group, how many values were cut and what they cost (see [`crate::value_cost`]).
    pub fn values_from(&self, from: u32) -> Result<(EncodedEvent, usize, usize), ProtocolError> {
        let malformed =
            |what: &str| ProtocolError::Malformed(format!("not a group of values: {what}"));
        let mut rd = self.as_bytes();
        let fields = (|| {
            let head = rmp::decode::read_array_len(&mut rd).ok()?;
            let seq: u64 = rmp::decode::read_int(&mut rd).ok()?;
            let variants = rmp::decode::read_map_len(&mut rd).ok()?;
            let mut name = [0u8; 6];
            let name = rmp::decode::read_str(&mut rd, &mut name).ok()?;
            let arity = rmp::decode::read_array_len(&mut rd).ok()?;
            let call_id: u64 = rmp::decode::read_int(&mut rd).ok()?;
            let first: u32 = rmp::decode::read_int(&mut rd).ok()?;
            let count = rmp::decode::read_array_len(&mut rd).ok()?;
            (head == 2 && variants == 1 && name == "Values" && arity == 3)
                .then_some((seq, call_id, first, count))
        })();
        let (seq, call_id, first, count) = fields.ok_or_else(|| malformed("its header"))?;
        let skip = from.saturating_sub(first).min(count);
        let mut cost = 0;
        for _ in 0..skip {
            let mut de = rmp_serde::Deserializer::new(&mut rd);
            let value = crate::value::deserialize(&mut de)
                .map_err(|e: rmp_serde::decode::Error| malformed(&e.to_string()))?;
            cost += crate::value_cost(&value);
        }
        let rest = EncodedEvent::values(seq, call_id, first + skip, (count - skip) as usize, rd);
        Ok((rest, skip as usize, cost))
    }

    /// Numbers the event: writes `[seq, ` in front of the body, as serde encodes the struct
    /// compact (every decoder of the protocol reads both forms).
    pub fn set_seq(&mut self, seq: u64) {
        let mut head = Vec::with_capacity(EVENT_HEAD);
        head.push(0x92);
        let _ = rmp::encode::write_uint(&mut head, seq);
        self.start = EVENT_HEAD - head.len();
        self.bytes[self.start..EVENT_HEAD].copy_from_slice(&head);
    }

    /// The encoded event (after [`EncodedEvent::set_seq`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// A whole `HostMessage::Events` message, framed, from `count` encoded events of `len` bytes
/// in all.
pub fn events_frame<'a>(
    count: usize,
    len: usize,
    events: impl Iterator<Item = &'a EncodedEvent>,
) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = Vec::with_capacity(HEADER_LEN + 16 + len);
    frame.extend_from_slice(&[0; HEADER_LEN]);
    // `{"Events": [event, ...]}`, as serde encodes the newtype variant.
    frame.push(0x81);
    let _ = rmp::encode::write_str(&mut frame, "Events");
    let _ = rmp::encode::write_array_len(&mut frame, count as u32);
    for event in events {
        frame.extend_from_slice(event.as_bytes());
    }
    frame_payload(frame)
}

/// `tokio_util` codec decoding `In` and encoding `Out`.
pub struct FrameCodec<In, Out> {
    /// The pieces of a long message read so far.
    partial: Vec<u8>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        FrameCodec {
            partial: Vec::new(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        loop {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&src[..HEADER_LEN]);
            let (len, more) = checked_len(header, self.partial.len(), READ_LIMIT)?;
            if src.len() < HEADER_LEN + len {
                src.reserve(HEADER_LEN + len - src.len());
                return Ok(None);
            }
            src.advance(HEADER_LEN);
            let piece = src.split_to(len);
            if more {
                self.partial.extend_from_slice(&piece);
                continue;
            }
            if self.partial.is_empty() {
                return decode_payload(&piece).map(Some);
            }
            self.partial.extend_from_slice(&piece);
            let payload = std::mem::take(&mut self.partial);
            return decode_payload(&payload).map(Some);
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let frame = encode_frame(&item)?;
        dst.reserve(frame.len());
        dst.put_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientMessage, Hello, HostMessage};
    use nu_protocol::{Span, Value, record};

    fn roundtrip(message: &HostMessage) -> HostMessage {
        let frame = encode_frame(message).unwrap();
        read_frame(&mut &frame[..]).unwrap().unwrap()
    }

    #[test]
    fn values_roundtrip_through_a_frame() {
        let span = Span::unknown();
        let value = Value::record(
            record! {
                "n" => Value::int(-7, span),
                "f" => Value::float(1.5, span),
                "s" => Value::string("héllo", span),
                "b" => Value::binary(vec![0, 255], span),
                "l" => Value::list(vec![Value::bool(true, span), Value::nothing(span)], span),
            },
            span,
        );
        let message = HostMessage::Events(vec![crate::Event {
            seq: 9,
            body: crate::EventBody::Value {
                call_id: 1,
                value: value.clone(),
            },
        }]);
        match roundtrip(&message) {
            HostMessage::Events(events) => match &events[0].body {
                crate::EventBody::Value { value: got, .. } => assert_eq!(got, &value),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn codec_decodes_frames_split_anywhere() {
        let mut codec = FrameCodec::<ClientMessage, ClientMessage>::new();
        let mut all = BytesMut::new();
        for _ in 0..3 {
            codec
                .encode(ClientMessage::Hello(Hello::current()), &mut all)
                .unwrap();
        }
        let bytes = all.to_vec();
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut decoded = 0;
            while codec.decode(&mut buf).unwrap().is_some() {
                decoded += 1;
            }
            buf.extend_from_slice(&bytes[split..]);
            while codec.decode(&mut buf).unwrap().is_some() {
                decoded += 1;
            }
            assert_eq!(decoded, 3, "split at {split}");
        }
    }

    #[test]
    fn a_message_longer_than_a_frame_goes_in_pieces_and_comes_back_whole() {
        let big = Value::binary(vec![7u8; MAX_FRAME_LEN * 2 + 12345], Span::unknown());
        let message = HostMessage::Events(vec![crate::Event {
            seq: 1,
            body: crate::EventBody::Value {
                call_id: 1,
                value: big.clone(),
            },
        }]);
        let frames = encode_frame(&message).unwrap();
        let first = u32::from_be_bytes(frames[..4].try_into().unwrap());
        assert_ne!(first & MORE, 0, "the first piece says more follow");
        assert_eq!((first & !MORE) as usize, MAX_FRAME_LEN);
        let check = |got: HostMessage| match got {
            HostMessage::Events(events) => match &events[0].body {
                crate::EventBody::Value { value, .. } => assert_eq!(value, &big),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        };
        check(read_frame(&mut &frames[..]).unwrap().unwrap());
        // The async codec, fed in uneven slices, with a small message after it.
        let mut codec = FrameCodec::<HostMessage, HostMessage>::new();
        let mut all = frames.clone();
        all.extend(
            encode_frame(&HostMessage::Removed {
                instance_id: uuid::Uuid::nil(),
            })
            .unwrap(),
        );
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in all.chunks(5_000_001) {
            buf.extend_from_slice(piece);
            while let Some(message) = codec.decode(&mut buf).unwrap() {
                got.push(message);
            }
        }
        assert_eq!(got.len(), 2);
        check(got.remove(0));
        assert!(matches!(got[0], HostMessage::Removed { .. }));
    }

    #[test]
    fn grouped_values_decode_as_serde_encodes_them() {
        let span = Span::unknown();
        let values = vec![
            Value::int(1, span),
            Value::string("two", span),
            Value::record(record! { "n" => Value::filesize(3, span) }, span),
        ];
        let mut bytes = Vec::new();
        for value in &values {
            bytes.extend(crate::value::encode(value).unwrap());
        }
        let event = EncodedEvent::values(77, 5, 0, values.len(), &bytes);
        let decoded = |event: &EncodedEvent| {
            let frame = events_frame(1, event.as_bytes().len(), std::iter::once(event)).unwrap();
            match read_frame::<HostMessage>(&mut &frame[..]).unwrap().unwrap() {
                HostMessage::Events(mut events) => {
                    assert_eq!(events[0].seq, 77);
                    match events.remove(0).body {
                        crate::EventBody::Values {
                            call_id,
                            first,
                            values,
                        } => {
                            assert_eq!(call_id, 5);
                            (first, values)
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(decoded(&event), (0, values.clone()));
        // The group without what a consumer took: indexes count from the group as made, and
        // what was cut costs what those values cost.
        let (rest, cut, cost) = event.values_from(2).unwrap();
        assert_eq!(decoded(&rest), (2, values[2..].to_vec()));
        assert_eq!(cut, 2);
        assert_eq!(
            cost,
            crate::value_cost(&values[0]) + crate::value_cost(&values[1])
        );
        let (same, none, nothing) = rest.values_from(1).unwrap();
        assert_eq!(decoded(&same), (2, values[2..].to_vec()));
        assert_eq!((none, nothing), (0, 0));
        let (empty, last, cost) = rest.values_from(9).unwrap();
        assert_eq!(decoded(&empty), (3, vec![]));
        assert_eq!((last, cost), (1, crate::value_cost(&values[2])));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_the_writer_and_the_reader() {
        // The limit is global: this test keeps it (tests run in threads of one process).
        let limit = max_message_len();
        let too_big = vec![0u8; HEADER_LEN + limit + 1];
        let err = frame_payload(too_big).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the limit of 1.0 GiB"),
            "{err}"
        );
        // Pieces that add up to more than the reader's limit: refused before the one that
        // passes it is read (here a limit of two frames).
        let mut frames = Vec::new();
        let piece = ((MAX_FRAME_LEN as u32) | MORE).to_be_bytes();
        for _ in 0..2 {
            frames.extend_from_slice(&piece);
            frames.resize(frames.len() + MAX_FRAME_LEN, 0);
        }
        frames.extend_from_slice(&piece);
        let err = read_limited::<HostMessage>(&mut &frames[..], 2 * MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversize { .. }), "{err}");
    }

    #[test]
    fn oversize_frame_is_refused_before_reading_it() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = read_frame::<ClientMessage>(&mut &header[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversize { .. }), "{err}");
        let mut codec = FrameCodec::<ClientMessage, ClientMessage>::new();
        let err = codec.decode(&mut BytesMut::from(&header[..])).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversize { .. }), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Deterministic pseudo-random garbage of many lengths, framed and unframed.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..512usize {
            let mut payload = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                payload.push(state as u8);
            }
            let _ = decode_payload::<ClientMessage>(&payload);
            let _ = decode_payload::<HostMessage>(&payload);
            let mut framed = (len as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&payload);
            let _ = read_frame::<ClientMessage>(&mut &framed[..]);
            let mut codec = FrameCodec::<HostMessage, HostMessage>::new();
            let _ = codec.decode(&mut BytesMut::from(&framed[..]));
            // Unframed garbage read as a frame header: an error or a short read, never a panic.
            let _ = read_frame::<HostMessage>(&mut &payload[..]);
        }
    }

    #[test]
    fn unknown_message_is_malformed() {
        #[derive(serde::Serialize)]
        enum Future {
            #[allow(dead_code)]
            A,
            SomethingNew {
                x: u8,
            },
        }
        let frame = encode_frame(&Future::SomethingNew { x: 1 }).unwrap();
        let err = read_frame::<ClientMessage>(&mut &frame[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let frame = encode_frame(&ClientMessage::ListSessions).unwrap();
        let err = read_frame::<ClientMessage>(&mut &frame[..frame.len() - 1]).unwrap_err();
        assert!(matches!(err, ProtocolError::Io(_)), "{err}");
        assert!(read_frame::<ClientMessage>(&mut &[][..]).unwrap().is_none());
    }
}
