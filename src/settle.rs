//! The only stage that acks. The pipeline hands it a [`Settlement`] — what
//! the delivery came to — and it publishes what that causes (the result
//! event, the dead-letter copy, the delayed-retry copy) with publisher
//! confirms, then acks the delivery exactly once. If the broker refuses a
//! publish (nack, returned, timeout, a queue deleted or full) the delivery goes
//! back to its queue after a backoff, the topology is declared again, and
//! readiness shows it: nothing is acked that was not confirmed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::AMQPValue,
};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    broker::{
        Flow, Names, PublishError, Publisher, Routed,
        headers::{self, History},
    },
    channel::ChannelState,
    events::{DeadLetteredEvent, timestamp},
    health::Health,
    job::Echo,
    metrics::Metrics,
    outcome::{EventKind, Failure, Reason, RetryCause},
    status::Check,
    telemetry::escape,
};

/// What a delivery came to: everything settle needs, decided before any
/// effect.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Sent (now, or earlier by this process): publish the `sent` event (and,
    /// when the channel tracks status, the message's first status check), ack.
    Sent {
        job_id: String,
        event: Vec<u8>,
        check: Option<Check>,
    },
    /// A status check was made: publish its new status events and the next
    /// check, ack.
    Status {
        events: Vec<(EventKind, serde_json::Value)>,
        next: Option<(Check, Duration)>,
    },
    /// Copy the job to the dead-letter queue and publish `dead_lettered`, ack.
    DeadLetter {
        reason: Reason,
        failure: Failure,
        echo: Echo,
        attempts: u32,
    },
    /// Hand the job to the delay queue for `wait` with its history, ack.
    Delay {
        history: History,
        wait: Duration,
        cause: RetryCause,
        failure: Failure,
    },
    /// Return the delivery to its queue untouched (stopping before its turn,
    /// a job's request or a status check's poll).
    GiveBack { why: &'static str },
    /// The pipeline panicked on this delivery.
    Panicked { message: String },
}

/// Panics on this many deliveries of a job in a row dead-letter it `internal`.
const PANICS_BEFORE_DEAD_LETTER: u32 = 3;
/// The longest wait before a failed settlement goes back to its queue.
const MAX_GIVE_BACK_WAIT: Duration = Duration::from_secs(30);

/// Where the settle stage publishes, and what it reports to.
pub(crate) struct Settler {
    pub(crate) publisher: Publisher,
    pub(crate) names: Names,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    /// Blocked while a `sent` result cannot be published: no new requests.
    flow: Arc<Flow>,
    /// The status-poll schedule (first check after a send).
    pub(crate) status: crate::config::StatusConfig,
    /// Woken when a publish was refused: the session declares the topology again.
    pub(crate) repair: Arc<Notify>,
    /// Cancelled when this broker session ends (the replica stops, or the
    /// connection is lost): waits before a give-back end at once.
    pub(crate) stop: CancellationToken,
    /// Settlements that failed in a row (for the give-back backoff).
    failures: AtomicU32,
    /// Counts up each time publishing works again (a publish confirmed, the
    /// topology declared again): a job waiting to go back goes at once if it
    /// failed before the latest recovery, whenever it started waiting.
    recovery: tokio::sync::watch::Sender<u64>,
}

impl Settler {
    /// A settler publishing on `publisher`, reporting to what `shared` has.
    pub(crate) fn new(
        publisher: Publisher,
        shared: &crate::channel::Shared,
        health: Arc<Health>,
        repair: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            status: shared.config.status.clone(),
            publisher,
            names: Names::new(&shared.config.broker.prefix),
            metrics: shared.metrics.clone(),
            health,
            flow: shared.flow.clone(),
            repair,
            stop,
            failures: AtomicU32::new(0),
            recovery: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Carries out `settlement` for `delivery`: confirmed publishes, then one
    /// ack, or one nack back to the queue.
    pub(crate) async fn settle(
        &self,
        delivery: &Delivery,
        channel: &ChannelState,
        queue: &str,
        received: Option<Instant>,
        settlement: Settlement,
    ) {
        let name = channel.config.name.as_str();
        let reports_a_send = matches!(settlement, Settlement::Sent { .. });
        let generation = *self.recovery.borrow();
        let published = match settlement {
            Settlement::Sent {
                job_id,
                event,
                check,
            } => {
                let sent = self
                    .publish_event(EventKind::Sent, name, &event, delivery, Some(&job_id))
                    .await;
                match (sent, check, self.status.schedule.first()) {
                    (Ok(()), Some(check), Some(delay)) => {
                        self.schedule_check(name, &check, *delay).await
                    }
                    (result, ..) => result,
                }
                .map(|()| Done::Completed(EventKind::Sent, None))
            }
            Settlement::Status { events, next } => self
                .status_checked(delivery, name, events, next)
                .await
                .map(|()| Done::Polled),
            Settlement::DeadLetter {
                reason,
                failure,
                echo,
                attempts,
            } => self
                .dead_letter(delivery, name, reason, &failure, echo, attempts)
                .await
                .map(|()| Done::Completed(EventKind::DeadLettered, Some((reason, failure)))),
            Settlement::Delay {
                history,
                wait,
                cause,
                failure,
            } => self
                .delay(delivery, channel, history, wait)
                .await
                .map(|label| Done::Delayed(label, cause, failure)),
            Settlement::GiveBack { why } => {
                info!(why, "returned to its queue");
                self.abandoned(name, received);
                return self.hand_back(delivery, queue).await;
            }
            Settlement::Panicked { message } => {
                return self
                    .panicked(delivery, channel, queue, received, message)
                    .await;
            }
        };
        match published {
            Ok(done) => {
                if self.failures.swap(0, Ordering::Relaxed) > 0 {
                    self.recovered();
                }
                self.health.set_settle_failing(false);
                self.flow.set_settle_failing(false);
                self.ack(delivery, name, received, done).await;
            }
            Err(e) => {
                if reports_a_send && !self.session_over() {
                    // What was sent cannot be reported: send nothing more
                    // until a publish goes through again (this job's own
                    // re-publish, from the dedup memory, will).
                    self.flow.set_settle_failing(true);
                }
                self.give_back_later(delivery, name, queue, received, generation, &e)
                    .await;
            }
        }
    }

    /// This settler's broker session has ended (its connection was lost or
    /// the worker stops): its publishes fail for that reason, not because
    /// the broker refuses them, and the next session must not inherit a
    /// "refused" state it would only clear by settling (a replica waiting
    /// as a single-active-consumer settles nothing, so it would stay
    /// unready; an active one would send nothing).
    fn session_over(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// A job that leaves this worker's hands unsettled (status checks are
    /// not jobs: `received` is `None`).
    fn abandoned(&self, channel: &str, received: Option<Instant>) {
        if received.is_some() {
            self.metrics.abandoned(channel);
        }
    }

    async fn ack(&self, delivery: &Delivery, channel: &str, received: Option<Instant>, done: Done) {
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            // Everything was published; the job comes back and, if it was
            // sent, the dedup memory re-publishes its event.
            warn!(error = %e, "ack failed after settle; the broker will redeliver");
            self.abandoned(channel, received);
            return;
        }
        let Some(received) = received else {
            return;
        };
        let took = received.elapsed();
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        match done {
            Done::Completed(kind, None) => {
                self.metrics.completed(channel, kind, took);
                info!(outcome = kind.as_str(), duration_ms = ms, "job settled");
            }
            Done::Completed(kind, Some((reason, failure))) => {
                self.metrics.completed(channel, kind, took);
                self.metrics.dead_lettered(channel, reason);
                info!(outcome = kind.as_str(), reason = reason.as_str(), error = %escape(&failure.message), duration_ms = ms, "job settled");
            }
            Done::Polled => {}
            Done::Delayed(label, cause, failure) => {
                self.metrics.delayed(channel, &label);
                info!(cause = cause.as_str(), error = %escape(&failure.message), delay = %label, "still failing; retrying later from a delay queue");
            }
        }
    }

    /// A panic: back to the queue after a pause, and past a few deliveries in
    /// a row dead-lettered `internal` with the panic message.
    async fn panicked(
        &self,
        delivery: &Delivery,
        channel: &ChannelState,
        queue: &str,
        received: Option<Instant>,
        message: String,
    ) {
        let name = channel.config.name.as_str();
        self.metrics.panicked(name);
        // Quorum queues count redeliveries in `x-delivery-count`.
        let before =
            headers::count(delivery.properties.headers().as_ref(), "x-delivery-count").unwrap_or(0);
        error!(panic = %escape(&message), deliveries = before.saturating_add(1), "the worker panicked on this job");
        if before.saturating_add(1) < PANICS_BEFORE_DEAD_LETTER {
            self.wait(backoff(before)).await;
            self.abandoned(name, received);
            return reject(delivery).await;
        }
        let failure = Failure::local(format!("the worker failed on this job: {message}"));
        let settlement = Settlement::DeadLetter {
            reason: Reason::Internal,
            failure,
            echo: Echo::read(&delivery.data),
            attempts: 0,
        };
        Box::pin(self.settle(delivery, channel, queue, received, settlement)).await;
    }

    /// A publish was refused: declare the topology again, wait (longer each
    /// time in a row, shorter when stopping), then return the delivery.
    async fn give_back_later(
        &self,
        delivery: &Delivery,
        channel: &str,
        queue: &str,
        received: Option<Instant>,
        generation: u64,
        e: &PublishError,
    ) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.session_over() {
            self.health.set_settle_failing(true);
        }
        self.metrics.settle_failed(channel, e.kind());
        self.abandoned(channel, received);
        self.repair.notify_one();
        let wait = backoff(n);
        error!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "could not publish the job's result; returning it to its queue after a pause");
        let mut recovery = self.recovery.subscribe();
        tokio::select! {
            biased;
            () = self.stop.cancelled() => {}
            _ = recovery.wait_for(|g| *g != generation) => {}
            () = tokio::time::sleep(wait) => {}
        }
        self.hand_back(delivery, queue).await;
    }

    /// Returns a delivery to `queue` (the one it came from) without
    /// spending its delivery budget: a quorum queue counts every nack with
    /// requeue toward `x-delivery-limit` (RabbitMQ 3.10 to 4.2), so a job
    /// handed back by pauses, restarts or give-backs would become `poison`
    /// without ever being tried. Instead a copy ([`headers::returned_copy`])
    /// is published to the queue with a confirm, and only then is the
    /// delivery acked. When that cannot be done (publishing blocked, the
    /// queue gone, no confirm) the delivery is nacked as before: nothing is
    /// lost, it only counts.
    pub(crate) async fn hand_back(&self, delivery: &Delivery, queue: &str) {
        if !self.flow.is_open() {
            return nack(delivery).await;
        }
        let copy = headers::returned_copy(&delivery.properties);
        match self
            .publisher
            .publish("", queue, &delivery.data, copy, false)
            .await
        {
            Ok(_) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // Its copy is queued and the broker redelivers the
                    // original too: the dedup memory keeps it from being
                    // sent twice by this replica.
                    warn!(error = %e, "ack after handing a job back failed; it may come twice");
                }
            }
            Err(e) => {
                warn!(error = %e, "could not queue the job's copy; returning it with a nack");
                nack(delivery).await;
            }
        }
    }

    /// Publishing works again: jobs that failed before now go back at once.
    pub(crate) fn recovered(&self) {
        self.recovery.send_modify(|g| *g = g.wrapping_add(1));
    }

    async fn wait(&self, wait: Duration) {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// Publishes a result event (`<event>.<channel>`). An unroutable event is
    /// counted, not an error: nobody may be listening.
    async fn publish_event(
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
    async fn dead_letter(
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
    async fn delay(
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

impl Settler {
    /// Publishes a status check to the delay queue for `delay`, from which it
    /// expires into the channel's status queue.
    async fn schedule_check(
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
    async fn status_checked(
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

/// What was published, for the closing metrics and log line.
enum Done {
    /// A status check handled.
    Polled,
    Completed(EventKind, Option<(Reason, Failure)>),
    Delayed(String, RetryCause, Failure),
}

/// 250 ms doubling per failure in a row, at most [`MAX_GIVE_BACK_WAIT`].
fn backoff(failures_in_a_row: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures_in_a_row.min(16))
        .unwrap_or(u32::MAX);
    Duration::from_millis(250)
        .saturating_mul(factor)
        .min(MAX_GIVE_BACK_WAIT)
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

/// Returns the delivery to its queue to be done again.
async fn nack(delivery: &Delivery) {
    let requeue = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(e) = delivery.acker.nack(requeue).await {
        warn!(error = %e, "nack failed; the broker redelivers when the channel closes");
    }
}

/// Returns the delivery to its queue as a failure: it counts toward the
/// delivery limit (a `basic.reject`, which RabbitMQ 4.3 counts where it no
/// longer counts a nack).
async fn reject(delivery: &Delivery) {
    let requeue = lapin::options::BasicRejectOptions { requeue: true };
    if let Err(e) = delivery.acker.reject(requeue).await {
        warn!(error = %e, "reject failed; the broker redelivers when the channel closes");
    }
}

/// The last resort when settling itself panicked: give the delivery back,
/// counted (a job that panics settle again and again reaches the limit).
pub(crate) async fn give_back_after_panic(delivery: &Delivery) {
    reject(delivery).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_back_backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_GIVE_BACK_WAIT);
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
}
