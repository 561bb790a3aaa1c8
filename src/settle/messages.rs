//! What settle publishes, built by pure functions: the properties of a
//! result event, of a dead-letter copy and of a delayed retry.

use lapin::{BasicProperties, types::AMQPValue};
use time::OffsetDateTime;

use crate::{
    broker::headers::{self, History},
    channel::ChannelState,
    events::timestamp,
    outcome::{Failure, Reason},
};

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
    channel: &ChannelState,
    history: History,
    label: &str,
) -> BasicProperties {
    let mut set = history.headers(body, &channel.config.name, &channel.key);
    set.push((headers::DELAY, headers::text_value(label)));
    headers::durable_copy(job, set)
}

/// The event's correlation id: the job's own, else its `job_id` — if it fits
/// AMQP's 255-byte short string; a longer `job_id` is in the body only.
pub(super) fn correlation_id(
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
}
