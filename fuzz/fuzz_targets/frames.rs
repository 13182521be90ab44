//! Frames as they arrive from the other side, split anywhere: the decoder never panics, never
//! asks for more than a frame's length, and decodes the same frames however the bytes come.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nu_session_protocol::{ClientMessage, FrameCodec, HostMessage};
use tokio_util::codec::Decoder;

/// Feeds `data` in pieces of the sizes `splits` gives (cycled), collecting what decodes (as
/// debug text) until the first error.
fn decode_all<In: serde::de::DeserializeOwned + std::fmt::Debug>(
    data: &[u8],
    splits: &[u8],
) -> Vec<String> {
    let mut codec = FrameCodec::<In, ()>::new();
    let mut buffer = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let size = splits
            .get(i % splits.len().max(1))
            .map_or(rest.len(), |s| *s as usize + 1);
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        i += 1;
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(message)) => out.push(format!("{message:?}")),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("error: {e}"));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let (splits, data) = input.split_at(input.len().min(8));
    // What a host reads from clients, and what a client reads from hosts.
    let host = decode_all::<ClientMessage>(data, splits);
    assert_eq!(
        host,
        decode_all::<ClientMessage>(data, &[]),
        "splits changed the frames"
    );
    let client = decode_all::<HostMessage>(data, splits);
    assert_eq!(
        client,
        decode_all::<HostMessage>(data, &[]),
        "splits changed the frames"
    );
});
