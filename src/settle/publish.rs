//! The confirmed publishes a settlement causes: result events, the
//! dead-letter copy, the delayed retry, the next status check.

use std::time::Duration;

use lapin::{BasicProperties, message::Delivery};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{Settler, dead_letter_copy, delay_copy, event_properties};
use crate::{
    broker::{
        PublishError, Routed,
        headers::{self, History},
    },
    channel::ChannelState,
    events::DeadLetteredEvent,
    job::Echo,
    outcome::{EventKind, Failure, Reason},
    status::Check,
};

impl Settler {
    /// Publishes a result event (`<event>.<channel>`). An unroutable event is
    /// counted, not an error: nobody may be listening.
    pub(super) async fn publish_event(
        &self,
        kind: EventKind,
        channel: &str,
        body: &[u8],
        delivery: &Delivery,
        job_id: Option<&str>,
    ) -> Result<(), PublishError> {
        let props = event_properties(&delivery.properties, job_id);
        let key = format!("{}.{channel}", kind.as_str());
        let routed = self
            .publisher
            .publish(&self.names.results(), &key, body, props, true)
            .await?;
        if routed == Routed::No {
            warn!(
                event = kind.as_str(),
                "result event was unroutable: no queue bound to the results exchange"
            );
            self.metrics.event_unroutable(channel, kind);
        }
        Ok(())
    }

    /// Copies the job (bytes untouched, properties made durable) to the
    /// dead-letter exchange as `<reason>.<channel>`, with the `x-octopods-*`
    /// headers, and publishes its `dead_lettered` event; both confirmed.
    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery,
        channel: &str,
        reason: Reason,
        failure: &Failure,
        echo: Echo,
        attempts: u32,
    ) -> Result<(), PublishError> {
        let now = OffsetDateTime::now_utc();
        let event = DeadLetteredEvent::new(
            echo.job_id,
            channel,
            reason,
            failure,
            attempts,
            echo.metadata,
            now,
        );
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let props = dead_letter_copy(
            &delivery.properties,
            channel,
            reason,
            failure,
            attempts,
            now,
        );
        let key = format!("{}.{channel}", reason.as_str());
        let exchange = self.names.dead();
        let (dead, event) = tokio::join!(
            self.publisher
                .publish(&exchange, &key, &delivery.data, props, false),
            self.publish_event(
                EventKind::DeadLettered,
                channel,
                &body,
                delivery,
                event.job_id.as_deref()
            ),
        );
        dead?;
        event
    }

    /// Sends the job to the delay queue for `wait`, from where it expires back
    /// to its channel queue, with its signed history in the headers.
    pub(super) async fn delay(
        &self,
        delivery: &Delivery,
        channel: &ChannelState,
        history: History,
        wait: Duration,
    ) -> Result<String, PublishError> {
        let label = crate::broker::topology::delay_label(wait);
        let name = channel.config.name.as_str();
        let props = delay_copy(
            &delivery.properties,
            &delivery.data,
            channel,
            history,
            &label,
        );
        self.publisher
            .publish(
                &self.names.retry_exchange(),
                &self.names.channel_queue(name),
                &delivery.data,
                props,
                false,
            )
            .await?;
        Ok(label)
    }
}

impl Settler {
    /// Publishes a status check to the delay queue for `delay`, from which it
    /// expires into the channel's status queue.
    pub(super) async fn schedule_check(
        &self,
        channel: &str,
        check: &Check,
        delay: Duration,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(check).unwrap_or_default();
        let label = crate::broker::topology::delay_label(delay);
        let mut h = lapin::types::FieldTable::default();
        h.insert(headers::DELAY.into(), headers::text_value(&label));
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(h);
        self.publisher
            .publish(
                &self.names.retry_exchange(),
                &self.names.status_queue(channel),
                &body,
                props,
                false,
            )
            .await
            .map(|_| ())
    }

    /// A poll's new status events, then the next check, all confirmed.
    pub(super) async fn status_checked(
        &self,
        delivery: &Delivery,
        channel: &str,
        events: Vec<(EventKind, serde_json::Value)>,
        next: Option<(Check, Duration)>,
    ) -> Result<(), PublishError> {
        for (kind, event) in &events {
            let body = serde_json::to_vec(event).unwrap_or_default();
            let job_id = event.get("job_id").and_then(serde_json::Value::as_str);
            self.publish_event(*kind, channel, &body, delivery, job_id)
                .await?;
            self.metrics.status_event(channel, *kind);
            info!(status = kind.as_str(), "delivery status published");
        }
        match next {
            Some((check, delay)) => self.schedule_check(channel, &check, delay).await,
            None => Ok(()),
        }
    }
}
