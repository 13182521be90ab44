//! How the plugin talks to `nu`: MessagePack, as `nu`'s own `MsgPackSerializer`, but what the
//! plugin sends is written compact — structs as arrays, not maps with their field names, and
//! byte vectors (a byte stream's chunks, binaries) as MessagePack bin, not arrays of small
//! ints — both forms `nu`'s decoder reads as well. An int shrinks from about 40 bytes to about
//! 10, a byte from 1–2 to 1 and its decoding to a copy; bulk results reach the engine several
//! times faster (docs/benchmarks.md). What `nu` sends is read by `nu`'s own decoder.

use nu_plugin::MsgPackSerializer;
use nu_plugin_core::{Encoder, PluginEncoder};
use nu_plugin_protocol::{PluginInput, PluginOutput, StreamData};
use nu_protocol::ShellError;

#[derive(Clone, Copy, Debug, Default)]
pub struct CompactMsgPack;

impl PluginEncoder for CompactMsgPack {
    fn name(&self) -> &str {
        // The format `nu` decodes; compact is one of its forms.
        "msgpack"
    }
}

fn encode<T: serde::Serialize>(
    data: &T,
    writer: &mut impl std::io::Write,
) -> Result<(), ShellError> {
    let mut serializer =
        rmp_serde::Serializer::new(writer).with_bytes(rmp_serde::config::BytesMode::ForceIterables);
    data.serialize(&mut serializer)
        .map_err(|error| ShellError::PluginFailedToEncode {
            msg: error.to_string(),
        })
}

/// What the plugin sends: written compact; a call's response names the stream it returns, for
/// [`crate::delivery`].
impl Encoder<PluginOutput> for CompactMsgPack {
    fn encode(
        &self,
        data: &PluginOutput,
        writer: &mut impl std::io::Write,
    ) -> Result<(), ShellError> {
        crate::delivery::sent(data);
        match data {
            PluginOutput::Data(id, StreamData::Raw(Ok(bytes))) => raw_chunk(*id, bytes, writer)
                .map_err(|error| ShellError::PluginFailedToEncode {
                    msg: error.to_string(),
                }),
            _ => encode(data, writer),
        }
    }

    fn decode(
        &self,
        reader: &mut impl std::io::BufRead,
    ) -> Result<Option<PluginOutput>, ShellError> {
        Encoder::<PluginOutput>::decode(&MsgPackSerializer, reader)
    }
}

/// A byte stream's chunk, as serde writes it compact (`{"Data": [id, {"Raw": {"Ok": bin}}]}`),
/// its bytes copied at once: serde hands them over one by one.
fn raw_chunk(id: usize, bytes: &[u8], writer: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(32);
    head.push(0x81);
    rmp::encode::write_str(&mut head, "Data")?;
    head.push(0x92);
    rmp::encode::write_uint(&mut head, id as u64)?;
    head.push(0x81);
    rmp::encode::write_str(&mut head, "Raw")?;
    head.push(0x81);
    rmp::encode::write_str(&mut head, "Ok")?;
    rmp::encode::write_bin_len(&mut head, bytes.len() as u32)?;
    writer.write_all(&head)?;
    writer.write_all(bytes)
}

/// What `nu` sends: read with `nu`'s own decoder; its acknowledgements of the streams this
/// plugin returned are told to [`crate::delivery`].
impl Encoder<PluginInput> for CompactMsgPack {
    fn encode(
        &self,
        data: &PluginInput,
        writer: &mut impl std::io::Write,
    ) -> Result<(), ShellError> {
        encode(data, writer)
    }

    fn decode(
        &self,
        reader: &mut impl std::io::BufRead,
    ) -> Result<Option<PluginInput>, ShellError> {
        let message = Encoder::<PluginInput>::decode(&MsgPackSerializer, reader)?;
        if let Some(message) = &message {
            crate::delivery::received(message);
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_plugin_protocol::{PipelineDataHeader, PluginCallResponse};
    use nu_protocol::{Span, Value, record};

    /// What the plugin writes compact, `nu`'s decoder reads back the same.
    #[test]
    fn nu_reads_what_the_plugin_writes_compact() {
        let span = Span::new(3, 9);
        let value = Value::record(
            record! {
                "i" => Value::int(7, span),
                "s" => Value::string("x", span),
                "l" => Value::list(vec![Value::filesize(3, span), Value::duration(4, span)], span),
                "d" => Value::date("2026-12-01T10:00:00+02:00".parse().unwrap(), span),
                "b" => Value::binary(vec![1, 2], span),
                "n" => Value::nothing(span),
            },
            span,
        );
        let output = PluginOutput::CallResponse(
            5,
            PluginCallResponse::PipelineData(PipelineDataHeader::value(value.clone())),
        );
        let mut bytes = Vec::new();
        Encoder::<PluginOutput>::encode(&CompactMsgPack, &output, &mut bytes).unwrap();
        let mut named = Vec::new();
        Encoder::<PluginOutput>::encode(&MsgPackSerializer, &output, &mut named).unwrap();
        assert!(
            bytes.len() * 3 < named.len() * 2,
            "{} vs {}",
            bytes.len(),
            named.len()
        );
        // A chunk of a byte stream written by hand is what serde writes.
        for len in [0, 1, 200, 70_000] {
            let chunk = PluginOutput::Data(300, StreamData::Raw(Ok(vec![7; len])));
            let (mut fast, mut serde) = (Vec::new(), Vec::new());
            Encoder::<PluginOutput>::encode(&CompactMsgPack, &chunk, &mut fast).unwrap();
            encode(&chunk, &mut serde).unwrap();
            // (serde writes an empty one as an empty array; both read back the same)
            if len > 0 {
                assert_eq!(fast, serde, "{len}");
            }
            match Encoder::<PluginOutput>::decode(&MsgPackSerializer, &mut &fast[..]).unwrap() {
                Some(PluginOutput::Data(300, StreamData::Raw(Ok(bytes)))) => {
                    assert_eq!(bytes, vec![7; len])
                }
                other => panic!("{other:?}"),
            }
        }
        // A chunk of a byte stream: bin, a byte each.
        let chunk = PluginOutput::Data(1, nu_plugin_protocol::StreamData::Raw(Ok(vec![200; 8192])));
        let mut raw = Vec::new();
        Encoder::<PluginOutput>::encode(&CompactMsgPack, &chunk, &mut raw).unwrap();
        assert!(raw.len() < 8192 + 32, "{}", raw.len());
        match Encoder::<PluginOutput>::decode(&MsgPackSerializer, &mut &raw[..]).unwrap() {
            Some(PluginOutput::Data(1, nu_plugin_protocol::StreamData::Raw(Ok(bytes)))) => {
                assert_eq!(bytes, vec![200; 8192])
            }
            other => panic!("{other:?}"),
        }
        let back = Encoder::<PluginOutput>::decode(&MsgPackSerializer, &mut &bytes[..])
            .unwrap()
            .unwrap();
        match back {
            PluginOutput::CallResponse(5, PluginCallResponse::PipelineData(header)) => match header
            {
                PipelineDataHeader::Value(got, _) => assert_eq!(got, value),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
