//! Any payload, as every message type: decoding never panics, and whatever decodes encodes
//! again and decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nu_session_protocol::{
    Attachment, ClientMessage, Event, HostMessage, RemoteError, SessionInfo, decode_payload,
    encode_frame,
};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = decode_payload::<T>(data) {
        let frame = encode_frame(&message).expect("what decoded encodes");
        let again: T = decode_payload(&frame[4..]).expect("what encoded decodes");
        assert_eq!(format!("{message:?}"), format!("{again:?}"));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientMessage>(data);
    round_trip::<HostMessage>(data);
    round_trip::<Event>(data);
    round_trip::<Attachment>(data);
    round_trip::<SessionInfo>(data);
    round_trip::<RemoteError>(data);
});
