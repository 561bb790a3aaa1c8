//! What a delivery comes to, as one whole value: a [`Settlement`] holds
//! every message to publish fully built — exchange, routing key, body and
//! properties — and what then becomes of the delivery. Pure functions with
//! `now` passed in build it (the pipeline chooses which, from what happened);
//! [`settle`](crate::delivery::settle) only publishes, confirms and acks. So the
//! pipeline's property test checks exactly what would be published.

use std::time::Duration;

use lapin::{BasicProperties, types::AMQPValue};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    broker::{
        Names,
        headers::{self, History},
    },
    config::ApiKey,
    events::{DeadLetteredEvent, timestamp},
    job::Echo,
    octopods::status::Check,
    outcome::{EventKind, Failure, Reason, RetryCause},
    replies::record::Record,
};

/// What settle does with a delivery.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Publish `messages` in order, each confirmed, stopping at the first
    /// the broker refuses (then the delivery goes back after a backoff);
    /// when all are confirmed, ack and report.
    Publish {
        messages: Vec<Message>,
        report: Report,
    },
    /// Return the delivery untried, its delivery budget kept (stopping
    /// before its turn, a pause).
    HandBack { why: &'static str },
    /// Return the delivery as a failure, counted toward the delivery limit,
    /// after `after` (a panic, before the limit of [`after_panic`]).
    Reject { after: Duration },
}

/// One message to publish, complete.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Body,
    pub(crate) properties: BasicProperties,
    /// A result event may find no queue bound (counted, not an error);
    /// every other copy must be routed.
    pub(crate) event: Option<EventKind>,
}

/// A message's body.
#[derive(Debug)]
pub(crate) enum Body {
    /// The job's own bytes, untouched (a dead letter, a delayed retry).
    Job,
    New(Vec<u8>),
}

/// What the settlement reports once acked (metrics, the closing log line).
#[derive(Debug)]
pub(crate) enum Report {
    Sent,
    DeadLettered {
        reason: Reason,
        failure: Failure,
    },
    Delayed {
        label: String,
        cause: RetryCause,
        failure: Failure,
    },
    /// A status check: the status events it published.
    Polled {
        events: Vec<EventKind>,
    },
}

impl Settlement {
    /// Whether the settlement reports a send (one that cannot be reported
    /// stops new requests until publishing works again).
    pub(crate) fn reports_a_send(&self) -> bool {
        matches!(
            self,
            Settlement::Publish {
                report: Report::Sent,
                ..
            }
        )
    }
}

/// What the builders need: where messages go, the delivery, and the time.
pub(crate) struct Context<'a> {
    pub(crate) names: &'a Names,
    pub(crate) channel: &'a str,
    /// The delivery's properties and body.
    pub(crate) job: &'a BasicProperties,
    pub(crate) body: &'a [u8],
    pub(crate) now: OffsetDateTime,
}

impl Context<'_> {
    /// A result event `<event>.<channel>` on the results exchange.
    fn event(&self, kind: EventKind, body: Vec<u8>, job_id: Option<&str>) -> Message {
        Message {
            exchange: self.names.results(),
            routing_key: format!("{}.{}", kind.as_str(), self.channel),
            body: Body::New(body),
            properties: event_properties(self.job, job_id),
            event: Some(kind),
        }
    }

    /// A status check into the delay queue for `delay`, from which it
    /// expires into the channel's status queue.
    fn check(&self, check: &Check, delay: Duration) -> Option<Message> {
        let label = crate::broker::topology::delay_label(delay);
        let mut h = lapin::types::FieldTable::default();
        h.insert(headers::DELAY.into(), headers::text_value(&label));
        Some(Message {
            exchange: self.names.retry_exchange(),
            routing_key: self.names.status_queue(self.channel),
            body: Body::New(written(serde_json::to_vec(check))?),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(h),
            event: None,
        })
    }

    /// A record appended to the prompt stream (docs/contract.md §15).
    fn record(&self, record: &Record) -> Option<Message> {
        Some(Message {
            exchange: String::new(),
            routing_key: self.names.prompts(),
            body: Body::New(written(serde_json::to_vec(record))?),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            event: None,
        })
    }

    /// Sent (now, or earlier by this process): its prompt record when the
    /// channel tracks replies, then the `sent` event, then the message's
    /// first status check when the channel tracks status. The prompt goes
    /// first: whoever has seen `sent` (a shop, a test, a customer's tap
    /// after it) finds the prompt in the stream already, and a matcher that
    /// catches up after a reply came in cannot miss it.
    pub(crate) fn sent(
        &self,
        job_id: &str,
        event: Result<Vec<u8>, serde_json::Error>,
        first_check: Option<(Check, Duration)>,
        prompt: Option<Record>,
    ) -> Settlement {
        let Some(event) = written(event) else {
            return unwritable();
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(prompt) = prompt {
            let Some(m) = self.record(&prompt) else {
                return unwritable();
            };
            messages.push(m);
        }
        messages.push(self.event(EventKind::Sent, event, Some(job_id)));
        if let Some((check, delay)) = first_check {
            let Some(m) = self.check(&check, delay) else {
                return unwritable();
            };
            messages.push(m);
        }
        Settlement::Publish {
            messages,
            report: Report::Sent,
        }
    }

    /// The job's bytes, untouched and made durable, to the dead-letter
    /// exchange as `<reason>.<channel>` with the `x-octopods-*` headers, and
    /// its `dead_lettered` event.
    pub(crate) fn dead_letter(
        &self,
        reason: Reason,
        failure: Failure,
        echo: Echo,
        attempts: u32,
    ) -> Settlement {
        let job_id = echo.job_id.clone();
        let event = DeadLetteredEvent::new(
            echo.job_id,
            self.channel,
            reason,
            &failure,
            attempts,
            echo.metadata,
            self.now,
        );
        let copy = Message {
            exchange: self.names.dead(),
            routing_key: format!("{}.{}", reason.as_str(), self.channel),
            body: Body::Job,
            properties: dead_letter_copy(
                self.job,
                self.channel,
                reason,
                &failure,
                attempts,
                self.now,
            ),
            event: None,
        };
        let Some(body) = written(serde_json::to_vec(&event)) else {
            return unwritable();
        };
        let event = self.event(EventKind::DeadLettered, body, job_id.as_deref());
        Settlement::Publish {
            messages: vec![copy, event],
            report: Report::DeadLettered { reason, failure },
        }
    }

    /// The job to the delay queue for `wait`, from where it expires back to
    /// its channel queue, with its history signed with the channel's key.
    pub(crate) fn delay(
        &self,
        key: &ApiKey,
        history: History,
        wait: Duration,
        cause: RetryCause,
        failure: Failure,
    ) -> Settlement {
        let label = crate::broker::topology::delay_label(wait);
        let copy = Message {
            exchange: self.names.retry_exchange(),
            routing_key: self.names.channel_queue(self.channel),
            body: Body::Job,
            properties: delay_copy(self.job, self.body, self.channel, key, history, &label),
            event: None,
        };
        Settlement::Publish {
            messages: vec![copy],
            report: Report::Delayed {
                label,
                cause,
                failure,
            },
        }
    }

    /// A poll's new status events, then the next check.
    pub(crate) fn status(
        &self,
        events: Vec<(EventKind, Value)>,
        next: Option<(Check, Duration)>,
        records: Vec<Record>,
    ) -> Settlement {
        let kinds = events.iter().map(|(k, _)| *k).collect();
        let mut messages = Vec::with_capacity(events.len().saturating_add(1));
        for (kind, event) in events {
            let job_id = event.get("job_id").and_then(Value::as_str);
            let Some(body) = written(serde_json::to_vec(&event)) else {
                return unwritable();
            };
            messages.push(self.event(kind, body, job_id));
        }
        if let Some((check, delay)) = next {
            let Some(m) = self.check(&check, delay) else {
                return unwritable();
            };
            messages.push(m);
        }
        for record in &records {
            let Some(m) = self.record(record) else {
                return unwritable();
            };
            messages.push(m);
        }
        Settlement::Publish {
            messages,
            report: Report::Polled { events: kinds },
        }
    }
}

/// How long a delivery waits before it goes back when its settlement could
/// not be written.
const UNWRITABLE_WAIT: Duration = Duration::from_secs(1);

/// A body's bytes, or `None` — logged — should serialising one ever fail;
/// the delivery is then [`unwritable`], never settled with an empty body.
/// Every body is made of strings, numbers, RFC 3339 times of years
/// 0–9999 and JSON values, which serde_json does not fail on (the tests
/// below write a dead letter with any metadata and text).
fn written(bytes: Result<Vec<u8>, serde_json::Error>) -> Option<Vec<u8>> {
    bytes
        .map_err(|e| {
            tracing::error!(error = %e, "a settlement's body could not be written; rejecting the delivery");
        })
        .ok()
}

/// A delivery whose settlement could not be written: rejected, counted
/// toward its delivery limit (so it ends `poison`, not in a loop).
fn unwritable() -> Settlement {
    Settlement::Reject {
        after: UNWRITABLE_WAIT,
    }
}

/// Panics on this many deliveries of a job in a row dead-letter it `internal`.
pub(crate) const PANICS_BEFORE_DEAD_LETTER: u32 = 3;
/// The longest wait before a delivery goes back to its queue.
pub(crate) const MAX_GIVE_BACK_WAIT: Duration = Duration::from_secs(30);

/// The panic policy: back to the queue (counted) after a pause, growing with
/// the deliveries so far; on the [`PANICS_BEFORE_DEAD_LETTER`]th delivery in
/// a row, dead-lettered `internal` with the panic message. Quorum queues
/// count redeliveries in `x-delivery-count`.
pub(crate) fn after_panic(ctx: &Context<'_>, message: &str) -> Settlement {
    let before = headers::count(ctx.job.headers().as_ref(), headers::DELIVERY_COUNT).unwrap_or(0);
    if before.saturating_add(1) < PANICS_BEFORE_DEAD_LETTER {
        return Settlement::Reject {
            after: backoff(before),
        };
    }
    let failure = Failure::local(format!("the worker failed on this job: {message}"));
    ctx.dead_letter(Reason::Internal, failure, Echo::read(ctx.body), 0)
}

/// 250 ms doubling per failure in a row, at most [`MAX_GIVE_BACK_WAIT`].
pub(crate) fn backoff(failures_in_a_row: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures_in_a_row.min(16))
        .unwrap_or(u32::MAX);
    Duration::from_millis(250)
        .saturating_mul(factor)
        .min(MAX_GIVE_BACK_WAIT)
}

/// The properties of a result event.
pub(crate) fn event_properties(job: &BasicProperties, job_id: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    match correlation_id(job, job_id) {
        Some(c) => props.with_correlation_id(c),
        None => props,
    }
}

/// The dead-letter copy's properties: the job's, made durable, with the
/// worker's `x-octopods-*` failure headers.
pub(crate) fn dead_letter_copy(
    job: &BasicProperties,
    channel: &str,
    reason: Reason,
    failure: &Failure,
    attempts: u32,
    now: OffsetDateTime,
) -> BasicProperties {
    let replays = headers::count(job.headers().as_ref(), headers::REPLAYS).unwrap_or(0);
    let error = headers::truncate(failure.message.clone(), headers::MAX_TEXT_HEADER);
    let mut set = vec![
        (headers::REASON, headers::text_value(reason.as_str())),
        (headers::ERROR, headers::text_value(&error)),
        (
            headers::ATTEMPTS,
            AMQPValue::LongLongInt(i64::from(attempts)),
        ),
        (headers::CHANNEL, headers::text_value(channel)),
        (headers::FAILED_AT, headers::text_value(&timestamp(now))),
        (headers::REPLAYS, AMQPValue::LongLongInt(i64::from(replays))),
    ];
    if let Some(s) = failure.http_status {
        set.push((headers::HTTP_STATUS, AMQPValue::LongLongInt(i64::from(s))));
    }
    if let Some(c) = failure.octopods_error.as_ref().and_then(|e| e.error_code) {
        set.push((headers::ERROR_CODE, AMQPValue::LongLongInt(c)));
    }
    headers::durable_copy(job, set)
}

/// The delayed-retry copy's properties: durable, with the signed history and
/// the delay queue's routing header.
pub(crate) fn delay_copy(
    job: &BasicProperties,
    body: &[u8],
    channel: &str,
    key: &ApiKey,
    history: History,
    label: &str,
) -> BasicProperties {
    let mut set = history.headers(body, channel, key);
    set.push((headers::DELAY, headers::text_value(label)));
    headers::durable_copy(job, set)
}

/// The event's correlation id: the job's own, else its `job_id` — if it fits
/// AMQP's 255-byte short string; a longer `job_id` is in the body only.
fn correlation_id(
    props: &BasicProperties,
    job_id: Option<&str>,
) -> Option<lapin::types::ShortString> {
    props
        .correlation_id()
        .clone()
        .or_else(|| job_id.and_then(headers::short))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_back_backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_GIVE_BACK_WAIT);
    }

    #[test]
    fn the_third_panic_in_a_row_dead_letters_internal() {
        let names = Names::new("octopods");
        let with_count = |n: i64| {
            let mut h = lapin::types::FieldTable::default();
            h.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(n));
            BasicProperties::default().with_headers(h)
        };
        let (first, third) = (BasicProperties::default(), with_count(2));
        let ctx = |job| Context {
            names: &names,
            channel: "store-eu",
            job,
            body: b"{}",
            now: time::macros::datetime!(2026-12-02 10:00 UTC),
        };
        assert!(matches!(
            after_panic(&ctx(&first), "boom"),
            Settlement::Reject { after } if after == Duration::from_millis(250)
        ));
        let Settlement::Publish { messages, report } = after_panic(&ctx(&third), "boom") else {
            panic!("the third panic must dead-letter");
        };
        assert!(matches!(
            report,
            Report::DeadLettered {
                reason: Reason::Internal,
                ..
            }
        ));
        assert_eq!(messages[0].routing_key, "internal.store-eu");
        assert_eq!(messages[0].exchange, "octopods.dead");
        assert_eq!(messages[1].routing_key, "dead_lettered.store-eu");
    }

    #[test]
    fn a_prompt_is_in_the_stream_before_its_sent_event() {
        let names = Names::new("octopods");
        let job = BasicProperties::default();
        let ctx = Context {
            names: &names,
            channel: "store-eu",
            job: &job,
            body: b"{}",
            now: time::macros::datetime!(2026-12-02 10:00 UTC),
        };
        let prompt = Record::Mark { id: "m".into() };
        let Settlement::Publish { messages, .. } =
            ctx.sent("order-1", Ok(b"{}".to_vec()), None, Some(prompt))
        else {
            panic!("a send publishes");
        };
        let keys: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
        assert_eq!(keys, ["octopods.prompts", "sent.store-eu"]);
    }

    #[test]
    fn a_job_id_too_long_for_a_short_string_is_not_a_correlation_id() {
        let p = BasicProperties::default();
        assert_eq!(correlation_id(&p, Some(&"€".repeat(200))), None);
        assert_eq!(
            correlation_id(&p, Some("order-1")).map(|c| c.to_string()),
            Some("order-1".into())
        );
        let own = p.with_correlation_id("theirs".into());
        assert_eq!(
            correlation_id(&own, Some("order-1")).map(|c| c.to_string()),
            Some("theirs".into())
        );
    }

    /// Any JSON, nested as deep as serde_json parses (a producer's metadata).
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(8, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                proptest::collection::btree_map(".*", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// What `written` guards against does not happen: a dead letter's
        /// event, with any metadata, error text and job id, is written.
        #[test]
        fn a_dead_letter_with_any_metadata_and_text_is_written(
            metadata in any_json(),
            job_id in ".*",
            error in ".*",
        ) {
            let names = Names::new("octopods");
            let props = BasicProperties::default();
            let ctx = Context {
                names: &names,
                channel: "store-eu",
                job: &props,
                body: b"{}",
                now: time::macros::datetime!(9999-12-31 23:59:59.999 UTC),
            };
            let echo = Echo { job_id: Some(job_id), metadata: Some(metadata) };
            let settled = ctx.dead_letter(Reason::Validation, Failure::local(error), echo, u32::MAX);
            let Settlement::Publish { messages, .. } = settled else {
                panic!("a dead letter must publish, not {settled:?}");
            };
            let Body::New(body) = &messages[1].body else {
                panic!("the event has a body of its own");
            };
            proptest::prop_assert!(serde_json::from_slice::<Value>(body).is_ok());
        }
    }

    #[test]
    fn a_body_that_cannot_be_written_rejects_the_delivery() {
        let e = serde_json::to_vec(&std::collections::HashMap::from([((1, 2), 3)])).unwrap_err();
        assert!(written(Err(e)).is_none());
        assert!(matches!(unwritable(), Settlement::Reject { .. }));
    }
}
