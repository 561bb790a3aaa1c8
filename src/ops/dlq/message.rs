//! What the DLQ tools know about one dead-lettered message: read from the
//! `x-octopods-*` headers the worker wrote, or, for a job RabbitMQ dead-lettered
//! itself (delivery limit), from `x-death` as reason `poison`.

use base64::Engine;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::{
    broker::{Names, headers},
    events::timestamp,
    outcome::Reason,
};

/// Where the tools read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Source {
    /// `<prefix>.dead`: jobs dead-lettered by the worker or by RabbitMQ.
    #[default]
    Dead,
    /// `<prefix>.unroutable`: jobs published for a channel no worker knows.
    Unroutable,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dead => "dead",
            Source::Unroutable => "unroutable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Source::Dead, Source::Unroutable]
            .into_iter()
            .find(|x| x.as_str() == s)
    }

    /// The queue it names.
    pub fn queue(self, names: &Names) -> String {
        match self {
            Source::Dead => names.dead(),
            Source::Unroutable => names.unroutable(),
        }
    }
}

/// The reason as shown and filtered: a dead-letter [`Reason`], or
/// `unroutable` for messages from the unroutable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    Dead(Reason),
    Unroutable,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Dead(r) => r.as_str(),
            Why::Unroutable => "unroutable",
        }
    }
}

/// One message, as the DLQ tools see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadMessage {
    pub job_id: Option<String>,
    pub channel: Option<String>,
    pub why: Why,
    pub error: String,
    pub attempts: u32,
    pub failed_at: Option<OffsetDateTime>,
    pub replays: u32,
    /// Which message this is, for choosing it again in a later snapshot: a
    /// stable hash of the routing key, the body and the failure record.
    /// Byte-identical dead letters share it (and are chosen together).
    pub print: u64,
}

fn death_time(death: Option<&FieldTable>) -> Option<OffsetDateTime> {
    match death?.inner().get("time")? {
        AMQPValue::Timestamp(t) => {
            OffsetDateTime::from_unix_timestamp(i64::try_from(*t).ok()?).ok()
        }
        _ => None,
    }
}

/// The newest `x-death` entry (RabbitMQ puts the latest death first).
fn x_death(table: Option<&FieldTable>) -> Option<&FieldTable> {
    match table?.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => match a.as_slice().first()? {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

impl DeadMessage {
    /// Reads what the tools need. A job RabbitMQ dead-lettered from a
    /// channel queue (the newest `x-death` entry names it) is `poison`, and
    /// only RabbitMQ's record is trusted for it: `x-octopods-*` headers on such
    /// a message are the producer's, and could name another channel.
    pub fn read(delivery: &Delivery, source: Source, names: &Names) -> Self {
        let mut m = Self::read_fields(delivery, source, names);
        m.print = print(delivery, &m);
        m
    }

    fn read_fields(delivery: &Delivery, source: Source, names: &Names) -> Self {
        let h = delivery.properties.headers().as_ref();
        let job_id = serde_json::from_slice::<Value>(&delivery.data)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned));
        let replays = headers::count(h, headers::REPLAYS).unwrap_or(0);
        let death = x_death(h);
        let died_in = headers::text(death, "queue")
            .and_then(|q| names.channel_of_queue(&q).map(str::to_owned));
        if let (Source::Dead, Some(channel)) = (source, died_in) {
            let reason = headers::text(death, "reason").unwrap_or_else(|| "unknown".into());
            return Self {
                job_id,
                channel: Some(channel),
                why: Why::Dead(Reason::Poison),
                error: format!(
                    "dead-lettered by RabbitMQ ({reason}): the job kept being redelivered"
                ),
                attempts: headers::count(h, "x-delivery-count")
                    .or_else(|| headers::count(death, "count"))
                    .unwrap_or(0),
                failed_at: death_time(death),
                replays,
                print: 0,
            };
        }
        let why = match source {
            Source::Unroutable => Why::Unroutable,
            Source::Dead => Why::Dead(
                headers::text(h, headers::REASON)
                    .and_then(|r| Reason::parse(&r))
                    .unwrap_or(Reason::Poison),
            ),
        };
        let channel = match source {
            Source::Dead => headers::text(h, headers::CHANNEL),
            // Unroutable jobs keep the routing key they were published with.
            Source::Unroutable => {
                Some(delivery.routing_key.as_str().to_owned()).filter(|k| !k.is_empty())
            }
        };
        let error = headers::text(h, headers::ERROR).unwrap_or_else(|| match why {
            Why::Unroutable => "no queue for this channel".into(),
            _ => "no failure recorded".into(),
        });
        let failed_at = headers::time(h, headers::FAILED_AT)
            .or_else(|| death_time(death))
            .or_else(|| {
                let t = (*delivery.properties.timestamp())?;
                OffsetDateTime::from_unix_timestamp(i64::try_from(t).ok()?).ok()
            });
        Self {
            job_id,
            channel,
            why,
            error,
            attempts: headers::count(h, headers::ATTEMPTS).unwrap_or(0),
            failed_at,
            replays,
            print: 0,
        }
    }

    /// The error with its numbers and ids folded (`title 21 chars, limit
    /// 20` → `title N chars, limit N`): what groups dead letters by cause.
    pub fn error_group(&self) -> String {
        fold_error(&self.error)
    }

    /// The `dlq list --json` line.
    pub fn summary_json(&self) -> Value {
        json!({
            "job_id": self.job_id,
            "channel": self.channel,
            "reason": self.why.as_str(),
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": self.failed_at.map(timestamp),
            "replays": self.replays,
        })
    }

    /// The `dlq export` line: the summary plus the message itself.
    pub fn export_json(&self, delivery: &Delivery) -> Value {
        let mut v = self.summary_json();
        let p = &delivery.properties;
        let mut props = Map::new();
        let mut put = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                props.insert(k.into(), Value::String(val));
            }
        };
        put(
            "content_type",
            p.content_type().as_ref().map(|s| s.to_string()),
        );
        put(
            "correlation_id",
            p.correlation_id().as_ref().map(|s| s.to_string()),
        );
        put("message_id", p.message_id().as_ref().map(|s| s.to_string()));
        put("app_id", p.app_id().as_ref().map(|s| s.to_string()));
        if let Some(mode) = p.delivery_mode() {
            props.insert("delivery_mode".into(), json!(mode));
        }
        if let Some(h) = p.headers() {
            props.insert("headers".into(), table_to_json(h));
        }
        let Some(o) = v.as_object_mut() else {
            return v;
        };
        o.insert("routing_key".into(), json!(delivery.routing_key.as_str()));
        o.insert("properties".into(), Value::Object(props));
        match std::str::from_utf8(&delivery.data) {
            Ok(text) => drop(o.insert("body".into(), json!(text))),
            Err(_) => {
                o.insert(
                    "body_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(&delivery.data)),
                );
            }
        }
        v
    }
}

/// A stable hash (SipHash with fixed keys) of what makes a dead letter this
/// one: where it was going, its body, and the record of its failure.
fn print(delivery: &Delivery, m: &DeadMessage) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)] // SipHasher: fixed keys, the same in every process
    let mut h = std::hash::SipHasher::new();
    delivery.routing_key.as_str().hash(&mut h);
    delivery.data.hash(&mut h);
    m.error.hash(&mut h);
    m.failed_at
        .map(OffsetDateTime::unix_timestamp_nanos)
        .hash(&mut h);
    m.attempts.hash(&mut h);
    m.replays.hash(&mut h);
    h.finish()
}

/// Longest folded error kept: a group's name, not its whole text.
const GROUP_TEXT: usize = 160;

/// Folds what varies between messages of one cause: digit runs become `N`,
/// words of 12 or more characters holding digits (ids, hashes, times) `…`, and the text is cut at
/// [`GROUP_TEXT`] bytes.
pub(crate) fn fold_error(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(GROUP_TEXT));
    for word in error.split_inclusive(char::is_whitespace) {
        let token = word.trim_end_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation());
        let sep = word.get(token.len()..).unwrap_or_default();
        let digits = token.chars().filter(char::is_ascii_digit).count();
        if token.len() >= 12 && digits >= 2 {
            out.push('…');
        } else {
            let mut in_digits = false;
            for c in token.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('N');
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    out.push(c);
                }
            }
        }
        out.push_str(sep);
        if out.len() > GROUP_TEXT {
            break;
        }
    }
    crate::observe::logging::truncate(out, GROUP_TEXT)
}

/// AMQP headers as plain JSON, for export.
pub(crate) fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!(format!("{d:?}")),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => {
            json!(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod fold_tests {
    use super::fold_error;

    #[test]
    fn numbers_and_ids_fold_so_one_cause_is_one_group() {
        assert_eq!(
            fold_error("title 21 chars, limit 20"),
            "title N chars, limit N"
        );
        assert_eq!(
            fold_error("title 3 chars, limit 20"),
            fold_error("title 21 chars, limit 7")
        );
        assert_eq!(
            fold_error("job 01JDX4ZQ6S3ZK2V9 seen at 2026-11-24T10:00:00Z"),
            "job … seen at …"
        );
        assert_eq!(fold_error("buttons[0].title"), "buttons[N].title");
        assert_ne!(fold_error("body too long"), fold_error("title too long"));
    }

    #[test]
    fn a_huge_error_folds_to_a_bounded_name() {
        let huge = "x ".repeat(500_000);
        assert!(fold_error(&huge).len() <= super::GROUP_TEXT);
        assert!(fold_error(&"é".repeat(1000)).len() <= super::GROUP_TEXT);
    }
}
