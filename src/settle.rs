//! The only stage that acks: it publishes what a job caused (the result
//! event, and for a failure the dead-letter copy) with publisher confirms, and
//! acks the delivery only after the broker confirmed all of it. If publishing
//! fails the delivery is nacked back to its queue, to be done again.

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::AMQPValue,
};
use time::OffsetDateTime;

use crate::{
    broker::{Names, PublishError, Publisher, headers},
    events::{DeadLetteredEvent, timestamp},
    outcome::{Failure, Reason},
};

/// Where the settle stage publishes.
pub struct Settler {
    pub publisher: Publisher,
    pub names: Names,
}

/// The longest `x-octopods-error` header kept.
const MAX_ERROR_HEADER: usize = 1000;

fn event_properties(correlation_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(correlation_id.into())
}

/// The event's correlation id: the job's own, else its `job_id`.
pub fn correlation_id(delivery: &Delivery, job_id: Option<&str>) -> String {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .or_else(|| job_id.map(str::to_owned))
        .unwrap_or_default()
}

impl Settler {
    /// Publishes a result event (`<event>.<channel>`). An unroutable event is
    /// reported, not an error: nobody may be listening.
    pub async fn publish_event(
        &self,
        event: &str,
        channel: &str,
        body: &[u8],
        correlation_id: &str,
    ) -> Result<bool, PublishError> {
        let routed = self
            .publisher
            .publish(
                &self.names.results(),
                &format!("{event}.{channel}"),
                body,
                event_properties(correlation_id),
                true,
            )
            .await?;
        Ok(routed == crate::broker::publish::Routed::Yes)
    }

    /// Copies the job, bytes and properties untouched plus the `x-octopods-*`
    /// headers, to the dead-letter exchange as `<reason>.<channel>`.
    pub async fn publish_dead_letter(
        &self,
        delivery: &Delivery,
        channel: &str,
        reason: Reason,
        failure: &Failure,
        attempts: u32,
        now: OffsetDateTime,
    ) -> Result<(), PublishError> {
        let mut error = failure.message.clone();
        if error.len() > MAX_ERROR_HEADER {
            let mut cut = MAX_ERROR_HEADER;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        let replays =
            headers::int(delivery.properties.headers().as_ref(), headers::REPLAYS).unwrap_or(0);
        let mut set = vec![
            (headers::REASON, headers::text_value(reason.as_str())),
            (headers::ERROR, headers::text_value(&error)),
            (
                headers::ATTEMPTS,
                AMQPValue::LongLongInt(i64::from(attempts)),
            ),
            (headers::CHANNEL, headers::text_value(channel)),
            (headers::FAILED_AT, headers::text_value(&timestamp(now))),
            (headers::REPLAYS, AMQPValue::LongLongInt(replays)),
        ];
        let mut remove = vec![headers::DELAY];
        match failure.http_status {
            Some(s) => set.push((headers::HTTP_STATUS, AMQPValue::LongLongInt(i64::from(s)))),
            None => remove.push(headers::HTTP_STATUS),
        }
        match failure.octopods_error.as_ref().and_then(|e| e.error_code) {
            Some(c) => set.push((headers::ERROR_CODE, AMQPValue::LongLongInt(c))),
            None => remove.push(headers::ERROR_CODE),
        }
        let props = headers::with_headers(&delivery.properties, set, &remove);
        self.publisher
            .publish(
                &self.names.dead(),
                &format!("{}.{channel}", reason.as_str()),
                &delivery.data,
                props,
                false,
            )
            .await
            .map(|_| ())
    }

    /// Dead-letters the delivery and publishes its `dead_lettered` event.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        channel: &str,
        event: &DeadLetteredEvent,
        failure: &Failure,
    ) -> Result<bool, PublishError> {
        let now = OffsetDateTime::now_utc();
        let body = serde_json::to_vec(event).unwrap_or_default();
        let correlation = correlation_id(delivery, event.job_id.as_deref());
        let (dead, routed) = tokio::join!(
            self.publish_dead_letter(
                delivery,
                channel,
                event.reason,
                failure,
                event.attempts,
                now
            ),
            self.publish_event("dead_lettered", channel, &body, &correlation),
        );
        dead?;
        routed
    }
}

impl Settler {
    /// Sends the job to the delay queue for `delay`, from where it expires
    /// back to its channel queue, with its attempt history in the headers.
    pub async fn delay(
        &self,
        delivery: &Delivery,
        channel: &str,
        attempts: u32,
        delayed: u32,
        first_attempt_at: OffsetDateTime,
        delay: std::time::Duration,
    ) -> Result<(), PublishError> {
        let label = crate::broker::topology::delay_label(delay);
        let props = headers::with_headers(
            &delivery.properties,
            vec![
                (
                    headers::ATTEMPTS,
                    AMQPValue::LongLongInt(i64::from(attempts)),
                ),
                (
                    headers::DELAYED,
                    AMQPValue::LongLongInt(i64::from(delayed) + 1),
                ),
                (
                    headers::FIRST_ATTEMPT_AT,
                    headers::text_value(&timestamp(first_attempt_at)),
                ),
                (headers::DELAY, headers::text_value(&label)),
            ],
            &[],
        );
        self.publisher
            .publish(
                &self.names.retry_exchange(),
                &self.names.channel_queue(channel),
                &delivery.data,
                props,
                false,
            )
            .await
            .map(|_| ())
    }
}

/// Acks after everything was confirmed.
pub async fn ack(delivery: &Delivery) -> Result<(), lapin::Error> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
}

/// Returns the delivery to its queue to be done again.
pub async fn requeue(delivery: &Delivery) -> Result<(), lapin::Error> {
    delivery
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .map(|_| ())
}
