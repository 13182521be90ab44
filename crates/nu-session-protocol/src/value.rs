//! Values on the wire, compact: the common kinds as plain MessagePack (nothing as nil, bools,
//! ints, floats, strings, binaries as bin, lists as arrays, records as maps with string keys),
//! every other kind (file sizes, durations, dates, globs, ranges, cell paths) as a map whose
//! one key is the integer 0 and whose value is Nushell's own encoding of it. No spans: a value's
//! span means something only where it was made, and each side gives the values it receives its
//! own (the client the span of the call). An int costs 1 to 9 bytes instead of ~40.
//!
//! Used with `#[serde(with = "crate::value")]` on every `Value` field of the messages.

use std::fmt;

use nu_protocol::{Record, Span, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The key that marks a value in Nushell's own encoding.
const OTHER: u8 = 0;

pub fn serialize<S: Serializer>(value: &Value, serializer: S) -> Result<S::Ok, S::Error> {
    Compact(value).serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    deserializer.deserialize_any(ValueVisitor)
}

/// For `Option<Value>` fields.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Value>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().map(Compact).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Value>, D::Error> {
        Option::<Owned>::deserialize(deserializer).map(|v| v.map(|v| v.0))
    }
}

/// For `Vec<Value>` fields.
pub mod many {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[Value], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&Compact(value))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Value>, D::Error> {
        Vec::<Owned>::deserialize(deserializer).map(|v| v.into_iter().map(|v| v.0).collect())
    }
}

/// One value encoded alone, compact (a piece of [`crate::EventBody::Values`]); refused when it
/// could not be sent.
pub fn encode(value: &Value) -> Result<Vec<u8>, crate::ProtocolError> {
    let mut bytes = Vec::new();
    let mut serializer = rmp_serde::Serializer::new(&mut bytes);
    Compact(value)
        .serialize(&mut serializer)
        .map_err(|e| crate::ProtocolError::Encode(e.to_string()))?;
    crate::codec::fits_in_a_message(bytes.len())?;
    Ok(bytes)
}

/// A value as this module encodes it.
pub struct Compact<'a>(pub &'a Value);

impl Serialize for Compact<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Nothing { .. } => serializer.serialize_unit(),
            Value::Bool { val, .. } => serializer.serialize_bool(*val),
            Value::Int { val, .. } => serializer.serialize_i64(*val),
            Value::Float { val, .. } => serializer.serialize_f64(*val),
            Value::String { val, .. } => serializer.serialize_str(val),
            Value::Binary { val, .. } => serializer.serialize_bytes(val),
            Value::List { vals, .. } => {
                let mut seq = serializer.serialize_seq(Some(vals.len()))?;
                for val in vals {
                    seq.serialize_element(&Compact(val))?;
                }
                seq.end()
            }
            Value::Record { val, .. } => {
                let mut map = serializer.serialize_map(Some(val.len()))?;
                for (key, val) in val.iter() {
                    map.serialize_entry(key, &Compact(val))?;
                }
                map.end()
            }
            other => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(&OTHER, other)?;
                map.end()
            }
        }
    }
}

/// A value decoded by this module.
pub struct Owned(pub Value);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(Owned)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Nushell value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::nothing(Span::unknown()))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::nothing(Span::unknown()))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::bool(v, Span::unknown()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::int(v, Span::unknown()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(|v| Value::int(v, Span::unknown()))
            .map_err(|_| E::custom("an integer larger than a Nushell int"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::float(v, Span::unknown()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::string(v, Span::unknown()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::string(v, Span::unknown()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::binary(v, Span::unknown()))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::binary(v, Span::unknown()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // A length from the peer is a hint, not an allocation it may choose.
        let mut vals = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Owned(val)) = seq.next_element()? {
            vals.push(val);
        }
        Ok(Value::list(vals, Span::unknown()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut record = Record::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::Other if record.is_empty() => {
                    let value: Value = map.next_value()?;
                    if map.next_key_seed(KeySeed)?.is_some() {
                        return Err(de::Error::custom("a value with more than one entry"));
                    }
                    return Ok(strip_spans(value));
                }
                Key::Other => return Err(de::Error::custom("a record with a non-text key")),
                Key::Column(column) => {
                    let Owned(val) = map.next_value()?;
                    record.push(column, val);
                }
            }
        }
        Ok(Value::record(record, Span::unknown()))
    }
}

/// A record's column, or the marker of a value in Nushell's encoding.
enum Key {
    Column(String),
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(Key::Column(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Key, E> {
        Ok(Key::Column(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        if v == u64::from(OTHER) {
            Ok(Key::Other)
        } else {
            Err(E::custom("an unknown value marker"))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        u64::try_from(v)
            .map_err(|_| E::custom("an unknown value marker"))
            .and_then(|v| self.visit_u64(v))
    }
}

/// Nushell's own encoding carries spans; they mean nothing here.
fn strip_spans(mut value: Value) -> Value {
    let _ = value.recurse_mut(&mut |v: &mut Value| {
        v.set_span(Span::unknown());
        Ok::<_, std::convert::Infallible>(())
    });
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_protocol::{Range, record};

    #[derive(Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "crate::value")]
        value: Value,
    }

    fn roundtrip(value: &Value) -> Value {
        let bytes = rmp_serde::to_vec_named(&Holder {
            value: value.clone(),
        })
        .unwrap();
        rmp_serde::from_slice::<Holder>(&bytes).unwrap().value
    }

    #[test]
    fn every_kind_of_value_comes_back_as_it_went() {
        let span = Span::unknown();
        let values = vec![
            Value::nothing(span),
            Value::bool(true, span),
            Value::int(i64::MIN, span),
            Value::int(i64::MAX, span),
            Value::int(-1, span),
            Value::float(-2.5, span),
            Value::string("héllo", span),
            Value::binary(vec![0, 1, 255], span),
            Value::list(vec![Value::int(1, span), Value::string("x", span)], span),
            Value::record(
                record! { "a" => Value::int(1, span), "" => Value::nothing(span) },
                span,
            ),
            Value::record(Record::new(), span),
            Value::list(vec![], span),
            Value::filesize(1024, span),
            Value::duration(-5_000, span),
            Value::date("2026-12-01T10:00:00+02:00".parse().unwrap(), span),
            Value::glob("*.rs", true, span),
            Value::range(
                Range::new(
                    Value::int(1, span),
                    Value::int(2, span),
                    Value::int(9, span),
                    nu_protocol::ast::RangeInclusion::Inclusive,
                    span,
                )
                .unwrap(),
                span,
            ),
            // Nested: a record of lists of the other kinds.
            Value::record(
                record! { "sizes" => Value::list(vec![Value::filesize(1, span)], span) },
                span,
            ),
        ];
        for value in values {
            assert_eq!(roundtrip(&value), value, "{value:?}");
        }
    }

    #[test]
    fn spans_are_not_sent() {
        let value = Value::list(vec![Value::int(7, Span::new(3, 4))], Span::new(1, 9));
        let back = roundtrip(&value);
        assert_eq!(back.span(), Span::unknown());
        assert_eq!(back.as_list().unwrap()[0].span(), Span::unknown());
    }

    #[test]
    fn an_int_is_a_few_bytes() {
        let bytes = rmp_serde::to_vec_named(&Holder {
            value: Value::int(1000, Span::new(5, 9)),
        })
        .unwrap();
        // The map header, "value", and 3 bytes of int.
        assert_eq!(bytes.len(), 1 + 6 + 3, "{bytes:?}");
    }

    #[test]
    fn malformed_values_are_errors() {
        // {0: 1, 0: 2}; {"a": 1, 0: 2}; {7: 1}; a u64 above i64::MAX.
        for bytes in [
            vec![
                0x81, 0xa5, b'v', b'a', b'l', b'u', b'e', 0x82, 0x00, 0x01, 0x00, 0x02,
            ],
            vec![
                0x81, 0xa5, b'v', b'a', b'l', b'u', b'e', 0x82, 0xa1, b'a', 0x01, 0x00, 0x02,
            ],
            vec![0x81, 0xa5, b'v', b'a', b'l', b'u', b'e', 0x81, 0x07, 0x01],
            vec![
                0x81, 0xa5, b'v', b'a', b'l', b'u', b'e', 0xcf, 0xff, 0, 0, 0, 0, 0, 0, 0,
            ],
        ] {
            assert!(
                rmp_serde::from_slice::<Holder>(&bytes).is_err(),
                "{bytes:?}"
            );
        }
    }
}
