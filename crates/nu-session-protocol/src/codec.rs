//! Frames: a 4-byte big-endian length, then that many bytes of MessagePack (named fields).
//!
//! One encoding, two faces: [`FrameCodec`] for `tokio_util::codec::Framed` (the client) and
//! [`read_frame`]/[`write_frame`] for blocking sockets (the host). A frame longer than
//! [`MAX_FRAME_LEN`], or one that does not decode as the expected message, is an error; callers
//! close that connection and carry on.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

/// The largest frame either side accepts or sends: 64 MiB. Single values larger than this
/// (a huge binary, say) are refused with an error rather than exhausting memory.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    Oversize { len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Encodes one message as a complete frame (header included).
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; HEADER_LEN];
    rmp_serde::encode::write_named(&mut buf, message)
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::Oversize { len });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame's payload (header removed).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    rmp_serde::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

fn checked_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::Oversize { len });
    }
    Ok(len)
}

/// Reads one message. `Ok(None)` means the peer closed the connection between frames.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<T>, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = checked_len(header)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    decode_payload(&payload).map(Some)
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

/// `tokio_util` codec decoding `In` and encoding `Out`.
pub struct FrameCodec<In, Out> {
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        FrameCodec {
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
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&src[..HEADER_LEN]);
        let len = checked_len(header)?;
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len);
        decode_payload(&payload).map(Some)
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
