//! The `x-octopods-*` message headers (docs/contract.md §6), read defensively: a
//! header may be missing, of any AMQP type, any size, or forged by a
//! producer. Bad values read as absent; numbers are clamped.
//!
//! The retry history a job carries between deliveries ([`History`]) decides
//! how many attempts it has left, so a producer must not be able to set it:
//! the worker signs it with an HMAC keyed by the channel's API key (which
//! producers never hold), and an unsigned or mis-signed history reads as a
//! fresh job. The signature also binds the history to the channel and the
//! job's bytes, so it cannot be carried over to another job or channel.

use hmac::{Hmac, Mac};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{config::ApiKey, events::timestamp};

pub(crate) const REASON: &str = "x-octopods-reason";
pub(crate) const ERROR: &str = "x-octopods-error";
pub(crate) const HTTP_STATUS: &str = "x-octopods-http-status";
pub(crate) const ERROR_CODE: &str = "x-octopods-error-code";
pub(crate) const ATTEMPTS: &str = "x-octopods-attempts";
pub(crate) const CHANNEL: &str = "x-octopods-channel";
pub(crate) const FAILED_AT: &str = "x-octopods-failed-at";
pub(crate) const REPLAYS: &str = "x-octopods-replays";
/// The delay queue a durable retry goes to (`10s`, `1m`, …); the retry
/// (headers) exchange routes on it. Not `x-` prefixed: a headers exchange
/// ignores binding arguments whose names start with `x-`, so such a binding
/// would match every message and copy it into every delay queue.
pub(crate) const DELAY: &str = "octopods-retry-delay";
/// Durable retries so far.
pub(crate) const DELAYED: &str = "x-octopods-delayed";
/// When the job's first attempt was made (RFC 3339), for `retry.max_elapsed`.
pub(crate) const FIRST_ATTEMPT_AT: &str = "x-octopods-first-attempt-at";
/// `template` once Octopods said the window is closed: later deliveries
/// go straight to the fallback template.
pub(crate) const VIA: &str = "x-octopods-via";
/// The HMAC over the history headers (hex).
pub(crate) const HISTORY_SIG: &str = "x-octopods-history-sig";
/// Deliveries earlier copies of a job spent without settling (the
/// broker's `x-delivery-count` of each copy the worker handed back), so a
/// job that keeps crashing workers still reaches the delivery limit.
pub(crate) const RETURNED: &str = "x-octopods-returned";
/// RabbitMQ's count of this copy's earlier deliveries (quorum queues).
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// The prefix of every header the worker owns; a producer's are dropped
/// from every copy the worker makes.
pub(crate) const OURS: &str = "x-octopods-";

/// RabbitMQ's own dead-lettering headers, dropped from the worker's copies
/// (a producer can forge them too).
pub(crate) const BROKER_DEATH: &[&str] = &[
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

/// The longest text header value the worker writes, in bytes.
pub(crate) const MAX_TEXT_HEADER: usize = 1000;

/// How deep header tables and arrays may nest: deeper values are dropped
/// on receipt, below the worker, by the patched `amq-protocol-types`
/// (vendor/README.md), which leaves a marker in their place.
pub(crate) use lapin::types::parsing::MAX_NESTING;

/// The first header (its name, escaped) whose value nested deeper than
/// [`MAX_NESTING`] and was dropped on receipt. A job carrying one is
/// malformed: what its producer sent never reached the worker whole.
pub(crate) fn too_deep(headers: Option<&FieldTable>) -> Option<String> {
    let (key, _) = headers?.inner().iter().find(|(_, v)| holds_marker(v))?;
    Some(truncate(
        crate::observe::logging::escape(key.as_str()).into_owned(),
        80,
    ))
}

/// Whether `value` holds the marker of a value dropped for its depth.
/// Run on every header of every job: a scalar is answered without
/// allocating; only tables and arrays are walked.
fn holds_marker(value: &AMQPValue) -> bool {
    let marker = lapin::types::parsing::TOO_DEEP.as_bytes();
    match value {
        AMQPValue::LongString(s) => return s.as_bytes() == marker,
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => {}
        _ => return false,
    }
    // Iterative, though the parser already bounds the depth.
    let mut open = vec![value];
    while let Some(v) = open.pop() {
        match v {
            AMQPValue::LongString(s) if s.as_bytes() == marker => return true,
            AMQPValue::FieldArray(a) => open.extend(a.as_slice()),
            AMQPValue::FieldTable(t) => open.extend(t.inner().values()),
            _ => {}
        }
    }
    false
}

/// The job's headers, for a copy the worker publishes. A value that held
/// the marker of a value dropped for its depth becomes the marker alone:
/// no copy carries even the levels the parser kept.
fn copied_headers(props: &BasicProperties) -> std::collections::BTreeMap<ShortString, AMQPValue> {
    let mut map = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    for v in map.values_mut() {
        if holds_marker(v) {
            *v = AMQPValue::LongString(lapin::types::parsing::TOO_DEEP.into());
        }
    }
    map
}

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
        AMQPValue::LongString(s) if s.as_bytes().len() <= 32 => {
            std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok()
        }
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a header as a count: negative or unreadable is absent, huge is clamped.
pub(crate) fn count(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    let n = int(headers, key)?;
    (n >= 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Deliveries of this job that ended unsettled: those of earlier copies
/// carried in [`RETURNED`], plus this copy's own `x-delivery-count`.
///
/// `x-delivery-count` on purpose, not RabbitMQ 4.3's `x-acquired-count`:
/// from 4.3 the first counts what the limit counts — rejects and lost
/// connections, the deliveries that failed — and the second also every
/// nack, which is how the worker hands a job back untried there. Counting
/// acquisitions would make a job paused a hundred times poison.
pub(crate) fn spent_deliveries(headers: Option<&FieldTable>) -> u32 {
    count(headers, RETURNED)
        .unwrap_or(0)
        .saturating_add(count(headers, DELIVERY_COUNT).unwrap_or(0))
}

/// The copy of an untried job that goes back to its queue in its place:
/// the same properties and headers, with the deliveries spent so far moved
/// from the broker's `x-delivery-count` (a new message starts at 0) into
/// [`RETURNED`].
pub(crate) fn returned_copy(props: &BasicProperties) -> BasicProperties {
    let headers = props.headers().as_ref();
    let spent = spent_deliveries(headers);
    let mut map = copied_headers(props);
    map.retain(|k, _| k.as_str() != DELIVERY_COUNT && k.as_str() != RETURNED);
    if let Some(k) = short(RETURNED).filter(|_| spent > 0) {
        map.insert(k, AMQPValue::LongLongInt(i64::from(spent)));
    }
    // Every property as it was but `user_id`: it names the producer's user,
    // and RabbitMQ refuses (closing the channel) a publish whose `user_id`
    // is not the publishing connection's own.
    let mut copy = identity(
        props,
        BasicProperties::default().with_headers(FieldTable::from(map)),
    );
    if let Some(v) = props.delivery_mode() {
        copy = copy.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = props.expiration() {
        copy = copy.with_expiration(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}

/// `copy` with the job's identifying and descriptive properties (content
/// type and encoding, correlation id, reply-to, message id, timestamp,
/// type, app id); every copy the worker makes keeps these.
fn identity(props: &BasicProperties, mut copy: BasicProperties) -> BasicProperties {
    if let Some(v) = props.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = props.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = props.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = props.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    copy
}

/// Reads a header as text (lossy UTF-8; at most [`MAX_TEXT_HEADER`] bytes kept).
pub fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    let s = match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        _ => return None,
    };
    Some(truncate(s, MAX_TEXT_HEADER))
}

/// Reads a header as an RFC 3339 time.
pub(crate) fn time(headers: Option<&FieldTable>, key: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&text(headers, key)?, &Rfc3339).ok()
}

pub(crate) use crate::observe::logging::truncate;

pub(crate) fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A short string if `s` fits AMQP's 255 bytes, else `None` (never a panic).
pub(crate) fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s.to_owned()).ok()
}

/// What earlier deliveries of a job did, as far as the worker can trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct History {
    /// Attempts (HTTP requests) already made.
    pub(crate) attempts: u32,
    /// Durable retries so far (which delay queue comes next).
    pub(crate) delayed: u32,
    /// When the first attempt was made.
    pub(crate) first_attempt_at: Option<OffsetDateTime>,
    /// The job goes on as its fallback template.
    pub(crate) template: bool,
}

/// Whether a delivery's history headers could be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// No history: a fresh job.
    Fresh,
    /// Signed by a worker of this channel.
    Signed,
    /// History headers present but not signed by us: ignored.
    Forged,
}

impl History {
    /// Reads the history of a delivery on `channel`, checking its signature.
    /// `now` bounds a first-attempt time from the future.
    pub(crate) fn read(
        props: &BasicProperties,
        body: &[u8],
        channel: &str,
        key: &ApiKey,
        now: OffsetDateTime,
    ) -> (History, Trust) {
        let h = props.headers().as_ref();
        let present = [ATTEMPTS, DELAYED, FIRST_ATTEMPT_AT, VIA, HISTORY_SIG]
            .iter()
            .any(|k| h.is_some_and(|t| t.inner().contains_key(*k)));
        if !present {
            return (History::default(), Trust::Fresh);
        }
        let history = History {
            attempts: count(h, ATTEMPTS).unwrap_or(0),
            delayed: count(h, DELAYED).unwrap_or(0),
            first_attempt_at: time(h, FIRST_ATTEMPT_AT).map(|t| t.min(now)),
            template: text(h, VIA).as_deref() == Some("template"),
        };
        let signed =
            text(h, HISTORY_SIG).is_some_and(|sig| history.signature(body, channel, key) == sig);
        if signed {
            (history, Trust::Signed)
        } else {
            (History::default(), Trust::Forged)
        }
    }

    /// The headers that carry this history to the next delivery.
    pub(crate) fn headers(
        &self,
        body: &[u8],
        channel: &str,
        key: &ApiKey,
    ) -> Vec<(&'static str, AMQPValue)> {
        let mut set = vec![
            (ATTEMPTS, AMQPValue::LongLongInt(i64::from(self.attempts))),
            (DELAYED, AMQPValue::LongLongInt(i64::from(self.delayed))),
            (HISTORY_SIG, text_value(&self.signature(body, channel, key))),
        ];
        if let Some(t) = self.first_attempt_at {
            set.push((FIRST_ATTEMPT_AT, text_value(&timestamp(t))));
        }
        if self.template {
            set.push((VIA, text_value("template")));
        }
        set
    }

    fn signature(&self, body: &[u8], channel: &str, key: &ApiKey) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) else {
            return String::new();
        };
        mac.update(b"octopods-history-v1\0");
        mac.update(channel.as_bytes());
        mac.update(b"\0");
        mac.update(&Sha256::digest(body));
        mac.update(&self.attempts.to_be_bytes());
        mac.update(&self.delayed.to_be_bytes());
        // Millisecond precision, as written by `timestamp`.
        let at = self.first_attempt_at.map(timestamp).unwrap_or_default();
        mac.update(at.as_bytes());
        mac.update(&[u8::from(self.template)]);
        hex(&mac.finalize().into_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(
        String::with_capacity(bytes.len().saturating_mul(2)),
        |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        },
    )
}

/// The properties of a copy the worker publishes (dead letter, delayed
/// retry): the original's, except what would let the broker drop or refuse
/// the copy — it is persistent, with no `expiration` and no `priority`, and
/// no `user_id` (RabbitMQ refuses a publish whose `user_id` is not the
/// publishing connection's user). The producer's `x-octopods-*` and
/// RabbitMQ's death headers are dropped; `set` is written.
pub(crate) fn durable_copy(
    props: &BasicProperties,
    set: Vec<(&str, AMQPValue)>,
) -> BasicProperties {
    let mut map = copied_headers(props);
    map.retain(|k, _| {
        let k = k.as_str();
        !k.starts_with(OURS) && k != DELAY && !BROKER_DEATH.contains(&k)
    });
    for (k, v) in set {
        if let Some(k) = short(k) {
            map.insert(k, v);
        }
    }
    identity(
        props,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(FieldTable::from(map)),
    )
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn props(pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        BasicProperties::default().with_headers(t)
    }

    #[test]
    fn integers_of_any_width_are_read() {
        let p = props(vec![
            ("a", AMQPValue::ShortShortUInt(3)),
            ("b", AMQPValue::LongLongInt(7)),
            ("c", text_value("9")),
            ("neg", AMQPValue::LongLongInt(-1)),
            ("huge", AMQPValue::LongLongInt(i64::MAX)),
            ("float", AMQPValue::Double(1.5)),
        ]);
        let h = p.headers().as_ref();
        assert_eq!(int(h, "a"), Some(3));
        assert_eq!(int(h, "b"), Some(7));
        assert_eq!(int(h, "c"), Some(9));
        assert_eq!(int(h, "d"), None);
        assert_eq!(count(h, "neg"), None);
        assert_eq!(count(h, "huge"), Some(u32::MAX));
        assert_eq!(int(h, "float"), None);
    }

    #[test]
    fn a_signed_history_round_trips() {
        let key = ApiKey::new("k");
        let now = datetime!(2026-11-25 10:00 UTC);
        let h = History {
            attempts: 3,
            delayed: 1,
            first_attempt_at: Some(datetime!(2026-11-25 09:59:00.123 UTC)),
            template: true,
        };
        let p = props(h.headers(b"body", "store-eu", &key));
        assert_eq!(
            History::read(&p, b"body", "store-eu", &key, now),
            (h, Trust::Signed)
        );
    }

    #[test]
    fn a_forged_or_moved_history_reads_as_fresh() {
        let key = ApiKey::new("k");
        let now = datetime!(2026-11-25 10:00 UTC);
        let h = History {
            attempts: 3,
            delayed: 1,
            first_attempt_at: None,
            template: false,
        };
        let signed = h.headers(b"body", "store-eu", &key);
        // Another job's bytes, another channel, another key, or no signature.
        for (body, channel, k) in [
            (&b"other"[..], "store-eu", "k"),
            (b"body", "store-us", "k"),
            (b"body", "store-eu", "other-key"),
        ] {
            let p = props(signed.clone());
            let read = History::read(&p, body, channel, &ApiKey::new(k), now);
            assert_eq!(read, (History::default(), Trust::Forged));
        }
        let p = props(vec![(ATTEMPTS, AMQPValue::LongLongInt(99))]);
        assert_eq!(
            History::read(&p, b"body", "store-eu", &key, now),
            (History::default(), Trust::Forged)
        );
        assert_eq!(
            History::read(&BasicProperties::default(), b"body", "store-eu", &key, now),
            (History::default(), Trust::Fresh)
        );
    }

    #[test]
    fn copies_are_durable_and_drop_forged_headers() {
        let p = props(vec![
            ("keep", text_value("1")),
            (REASON, text_value("forged")),
            ("x-death", AMQPValue::Void),
        ])
        .with_expiration("1".into())
        .with_priority(9)
        .with_delivery_mode(1)
        .with_user_id("someone".into())
        .with_correlation_id("c".into());
        let c = durable_copy(&p, vec![(CHANNEL, text_value("store-eu"))]);
        assert_eq!(*c.delivery_mode(), Some(2));
        assert_eq!(*c.expiration(), None);
        assert_eq!(*c.priority(), None);
        assert_eq!(*c.user_id(), None);
        assert_eq!(c.correlation_id().as_ref().map(|s| s.as_str()), Some("c"));
        let h = c.headers().as_ref();
        assert_eq!(text(h, "keep").as_deref(), Some("1"));
        assert_eq!(text(h, REASON), None);
        assert_eq!(text(h, CHANNEL).as_deref(), Some("store-eu"));
        assert!(!h.is_some_and(|t| t.inner().contains_key("x-death")));
    }

    #[test]
    fn short_strings_over_255_bytes_are_refused_not_panicked() {
        assert!(short(&"é".repeat(127)).is_some());
        assert!(short(&"€".repeat(200)).is_none());
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let s = truncate("é".repeat(600), MAX_TEXT_HEADER);
        assert!(s.len() <= MAX_TEXT_HEADER && s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_returned_copy_carries_the_deliveries_spent_and_nothing_else_changes() {
        let mut h = FieldTable::default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        h.insert(RETURNED.into(), AMQPValue::LongLongInt(4));
        h.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-ab-cd-01".into()),
        );
        let job = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_user_id("shop".into())
            .with_headers(h);
        let copy = returned_copy(&job);
        let ch = copy.headers().as_ref();
        assert_eq!(count(ch, DELIVERY_COUNT), None);
        assert_eq!(count(ch, RETURNED), Some(7));
        assert_eq!(spent_deliveries(ch), 7);
        assert_eq!(text(ch, "traceparent").as_deref(), Some("00-ab-cd-01"));
        assert_eq!(copy.message_id(), job.message_id());
        assert_eq!(copy.timestamp(), job.timestamp());
        assert_eq!(copy.delivery_mode(), job.delivery_mode());
        assert_eq!(copy.content_type(), job.content_type());
        // The worker's connection may not publish as the producer's user.
        assert_eq!(copy.user_id(), &None);
        // A job never returned gets no header at all.
        assert_eq!(
            returned_copy(&BasicProperties::default())
                .headers()
                .as_ref()
                .map(|t| t.inner().len()),
            Some(0)
        );
    }

    /// The headers a quorum queue delivers a job with, as each version
    /// sends them, after `failed` returns that count (lost connections,
    /// rejects) and `nacked` hand-backs by nack (4.3 only: before, the
    /// worker hands back copies, which start at 0).
    fn delivered(version: &str, failed: i64, nacked: i64) -> FieldTable {
        let mut h = FieldTable::default();
        match version {
            "3.10" | "4.0" if failed > 0 => {
                h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(failed));
            }
            "4.3" => {
                if failed > 0 {
                    h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(failed));
                }
                if failed + nacked > 0 {
                    let acquired = AMQPValue::LongLongInt(failed + nacked);
                    h.insert("x-acquired-count".into(), acquired);
                }
            }
            _ => {}
        }
        h
    }

    #[test]
    fn a_job_handed_back_100_times_has_spent_nothing_on_any_version() {
        for v in ["3.10", "4.0"] {
            // 100 hand-backs as copies: each copy starts again at 0.
            let mut copy = BasicProperties::default().with_headers(delivered(v, 0, 0));
            for _ in 0..100 {
                copy = returned_copy(&copy);
            }
            assert_eq!(spent_deliveries(copy.headers().as_ref()), 0, "{v}");
        }
        // 4.3: plain nacks, counted only in x-acquired-count.
        assert_eq!(spent_deliveries(Some(&delivered("4.3", 0, 100))), 0);
    }

    #[test]
    fn a_job_that_crashes_the_worker_every_time_reaches_the_limit_on_every_version() {
        for v in ["3.10", "4.0", "4.3"] {
            assert_eq!(spent_deliveries(Some(&delivered(v, 21, 0))), 21, "{v}");
        }
        // Crashes between hand-backs: the copies carry what was spent.
        let crashed = BasicProperties::default().with_headers(delivered("4.0", 7, 0));
        let copy = returned_copy(&crashed);
        let again = copy.headers().clone().map(|mut h| {
            h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(5));
            h
        });
        assert_eq!(spent_deliveries(again.as_ref()), 12);
        // 4.3 with nacks in between: only the failures count.
        assert_eq!(spent_deliveries(Some(&delivered("4.3", 21, 50))), 21);
    }

    #[test]
    fn a_job_requeued_by_a_lost_connection_counts_once_on_every_version() {
        for v in ["3.10", "4.0", "4.3"] {
            assert_eq!(spent_deliveries(Some(&delivered(v, 1, 0))), 1, "{v}");
        }
    }

    #[test]
    fn a_plain_nack_hands_back_for_free_only_from_4_3() {
        use crate::broker::ServerVersion;
        for (v, free) in [
            ("3.10.8", false),
            ("4.0.5", false),
            ("4.2.1", false),
            ("4.3.0", true),
            ("5.0.0", true),
        ] {
            assert_eq!(ServerVersion::parse(v).nack_is_free(), free, "{v}");
        }
    }
}
