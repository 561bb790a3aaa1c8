//! The `x-octopods-*` message headers (CONTRACT §6) and reading AMQP header
//! values of whatever integer or string type a producer used.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};

pub const REASON: &str = "x-octopods-reason";
pub const ERROR: &str = "x-octopods-error";
pub const HTTP_STATUS: &str = "x-octopods-http-status";
pub const ERROR_CODE: &str = "x-octopods-error-code";
pub const ATTEMPTS: &str = "x-octopods-attempts";
pub const CHANNEL: &str = "x-octopods-channel";
pub const FAILED_AT: &str = "x-octopods-failed-at";
pub const REPLAYS: &str = "x-octopods-replays";
/// The delay queue a durable retry goes to (`10s`, `1m`, …); the retry
/// (headers) exchange routes on it. Not `x-` prefixed: a headers exchange
/// ignores binding arguments whose names start with `x-`, so such a binding
/// would match every message and copy it into every delay queue.
pub const DELAY: &str = "octopods-retry-delay";
/// Durable retries so far.
pub const DELAYED: &str = "x-octopods-delayed";
/// When the job's first attempt was made (RFC 3339), for `retry.max_elapsed`.
pub const FIRST_ATTEMPT_AT: &str = "x-octopods-first-attempt-at";

/// Reads a header as an integer, whatever width it was sent with.
pub fn int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// Reads a header as text.
pub fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Attempts already made on this job by earlier deliveries.
pub fn attempts(props: &BasicProperties) -> u32 {
    int(props.headers().as_ref(), ATTEMPTS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// What earlier deliveries did: attempts, durable retries, first attempt time.
pub fn history(props: &BasicProperties) -> (u32, u32, Option<time::OffsetDateTime>) {
    let h = props.headers().as_ref();
    let delayed = int(h, DELAYED)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let first = text(h, FIRST_ATTEMPT_AT).and_then(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
    });
    (attempts(props), delayed, first)
}

/// The properties with headers changed: `set` entries written, `remove` keys dropped.
pub fn with_headers(
    props: &BasicProperties,
    set: Vec<(&str, AMQPValue)>,
    remove: &[&str],
) -> BasicProperties {
    let mut table = props.headers().clone().unwrap_or_default();
    let mut map = table.inner().clone();
    for key in remove {
        map.remove(*key);
    }
    for (k, v) in set {
        map.insert(k.into(), v);
    }
    table = FieldTable::from(map);
    props.clone().with_headers(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_any_width_are_read() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::ShortShortUInt(3));
        t.insert("b".into(), AMQPValue::LongLongInt(7));
        t.insert("c".into(), text_value("9"));
        assert_eq!(int(Some(&t), "a"), Some(3));
        assert_eq!(int(Some(&t), "b"), Some(7));
        assert_eq!(int(Some(&t), "c"), Some(9));
        assert_eq!(int(Some(&t), "d"), None);
    }

    #[test]
    fn with_headers_keeps_others_and_removes_named() {
        let mut t = FieldTable::default();
        t.insert("keep".into(), text_value("1"));
        t.insert("drop".into(), text_value("2"));
        let p = BasicProperties::default().with_headers(t);
        let p = with_headers(&p, vec![("new", AMQPValue::LongLongInt(5))], &["drop"]);
        let h = p.headers().as_ref();
        assert_eq!(text(h, "keep").as_deref(), Some("1"));
        assert_eq!(text(h, "drop"), None);
        assert_eq!(int(h, "new"), Some(5));
    }
}
