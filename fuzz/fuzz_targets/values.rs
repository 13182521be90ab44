//! Deeply nested and wide values built from the input survive the wire whole: encoded in an
//! event (as serde encodes it, and as the worker's outbox does: body first, header after, in a
//! batch), decoded, equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nu_protocol::{Record, Span, Value};
use nu_session_protocol::{
    EncodedEvent, Event, EventBody, HostMessage, decode_payload, encode_frame, events_frame,
    read_frame,
};

/// A value from the bytes: each byte picks a kind; lists and records take what follows.
fn value(bytes: &mut std::slice::Iter<'_, u8>, depth: usize) -> Value {
    let span = Span::unknown();
    let Some(&b) = bytes.next() else {
        return Value::nothing(span);
    };
    match b % 9 {
        0 => Value::int(i64::from(b) * 1_000_003 - 7, span),
        1 => Value::float(f64::from(b) / 3.0, span),
        2 => Value::string(String::from_utf8_lossy(&[b; 3]).into_owned(), span),
        3 => Value::bool(b % 2 == 0, span),
        4 => Value::binary(vec![b; usize::from(b % 16)], span),
        5 => Value::duration(i64::from(b) << 20, span),
        6 if depth < 64 => {
            let n = usize::from(b % 5);
            Value::list((0..n).map(|_| value(bytes, depth + 1)).collect(), span)
        }
        7 if depth < 64 => {
            let mut record = Record::new();
            for i in 0..usize::from(b % 4) {
                record.push(format!("k{i}"), value(bytes, depth + 1));
            }
            Value::record(record, span)
        }
        _ => Value::nothing(span),
    }
}

fuzz_target!(|data: &[u8]| {
    let original = value(&mut data.iter(), 0);
    let event = Event {
        seq: 1,
        body: EventBody::Value {
            call_id: 1,
            value: original.clone(),
        },
    };
    let frame = encode_frame(&event).expect("encodes");
    let decoded: Event = decode_payload(&frame[4..]).expect("decodes");
    match decoded.body {
        EventBody::Value { value, .. } => assert_eq!(value, original),
        other => panic!("came back as {other:?}"),
    }
    let mut encoded = EncodedEvent::new(&event.body).expect("encodes");
    encoded.set_seq(u64::from(data.first().copied().unwrap_or(0)) << 40);
    let frame = events_frame(1, encoded.as_bytes().len(), std::iter::once(&encoded)).expect("frames");
    match read_frame::<HostMessage>(&mut &frame[..]) {
        Ok(Some(HostMessage::Events(events))) => match &events[0].body {
            EventBody::Value { value, .. } => assert_eq!(value, &original),
            other => panic!("came back as {other:?}"),
        },
        other => panic!("came back as {other:?}"),
    }
});
