//! The session record, exactly as the command contract gives it: these columns, in this order.

use chrono::{DateTime, Local, Utc};
use nu_protocol::{Record, Span, Value};

use crate::sessions::Session;

pub const COLUMNS: [&str; 15] = [
    "id",
    "name",
    "computer_name",
    "transport",
    "state",
    "availability",
    "configuration_name",
    "instance_id",
    "user",
    "port",
    "idle_timeout",
    "output_buffering_mode",
    "created",
    "disconnected_on",
    "expires_on",
];

pub fn session_record(session: &Session, span: Span) -> Value {
    let date = |d: Option<DateTime<Utc>>| match d {
        Some(d) => Value::date(d.with_timezone(&Local).fixed_offset(), span),
        None => Value::nothing(span),
    };
    let values = [
        Value::int(session.id, span),
        Value::string(&session.name, span),
        Value::string(&session.computer_name, span),
        Value::string(session.transport.as_str(), span),
        Value::string(session.state().as_str(), span),
        Value::string(session.availability().as_str(), span),
        Value::string(&session.configuration_name, span),
        Value::string(session.instance_id.to_string(), span),
        Value::string(&session.user, span),
        session
            .port
            .map_or(Value::nothing(span), |p| Value::int(p.into(), span)),
        Value::duration(
            i64::try_from(session.idle_timeout.as_nanos()).unwrap_or(i64::MAX),
            span,
        ),
        Value::string(session.output_buffering.as_str(), span),
        date(Some(session.created)),
        date(session.disconnected_on),
        date(session.expires_on()),
    ];
    let mut record = Record::with_capacity(COLUMNS.len());
    for (column, value) in COLUMNS.iter().zip(values) {
        record.push(*column, value);
    }
    Value::record(record, span)
}

/// A table of session records.
pub fn session_table<'a>(sessions: impl IntoIterator<Item = &'a Session>, span: Span) -> Value {
    Value::list(
        sessions
            .into_iter()
            .map(|s| session_record(s, span))
            .collect(),
        span,
    )
}
