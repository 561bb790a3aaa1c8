//! The only stage that acks. The pipeline hands it a [`Settlement`] — what
//! the delivery came to, every message already built — and it publishes
//! them in order with publisher confirms, then acks the delivery exactly
//! once. It decides nothing. If the broker refuses a publish (nack,
//! returned, timeout, a queue deleted or full) the delivery goes back to
//! its queue after a backoff, the topology is declared again, and readiness
//! shows it: nothing is acked that was not confirmed.
//!
//! - [`hand_back`]: returning a delivery (a confirmed copy, the budget kept)
//!   and the backoff after refused publishes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Instant,
};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::observe::emit::{Emit, EventUnroutable};
use crate::{
    broker::{PublishError, Publisher, Routed},
    delivery::settlement::{Body, Message, Report, Settlement},
    observe::health::Health,
    observe::logging::escape,
    observe::metrics::Metrics,
    outcome::EventKind,
};

mod hand_back;

/// Where the settle stage publishes, and what it reports to.
pub(crate) struct Settler {
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Arc<Metrics>,
    /// Blocked while a `sent` result cannot be published: no new requests.
    /// (A refused publish is reported by the publisher itself: the session
    /// declares the topology again; `Publisher::reporting_to`.)
    pub(crate) health: Arc<Health>,
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
        shared: &crate::delivery::channel::Shared,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            publisher,
            metrics: shared.metrics.clone(),
            health,
            stop,
            failures: AtomicU32::new(0),
            recovery: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Carries out `settlement` for `delivery`, which came from `queue` of
    /// `channel`: the confirmed publishes, then one ack; or the delivery back.
    pub(crate) async fn settle(
        &self,
        delivery: &Delivery,
        channel: &str,
        queue: &str,
        received: Option<Instant>,
        settlement: Settlement,
    ) {
        let reports_a_send = settlement.reports_a_send();
        let generation = *self.recovery.borrow();
        let (messages, report) = match settlement {
            Settlement::Publish { messages, report } => (messages, report),
            Settlement::HandBack { why } => {
                info!(why, "returned to its queue");
                self.unsettled(channel, received);
                return self.hand_back(delivery, queue).await;
            }
            Settlement::Reject { after } => {
                self.wait(after).await;
                self.unsettled(channel, received);
                return reject(delivery).await;
            }
        };
        let mut published = Ok(());
        for message in messages {
            published = self.publish(delivery, channel, message).await;
            if published.is_err() {
                break;
            }
        }
        match published {
            Ok(()) => {
                if self.failures.swap(0, Ordering::Relaxed) > 0 {
                    self.recovered();
                }
                self.health.published();
                self.ack(delivery, channel, received, report).await;
            }
            Err(e) => {
                if !self.session_over() {
                    // What was sent cannot be reported: send nothing more
                    // until a publish goes through again (this job's own
                    // re-publish, from the dedup memory, will).
                    self.health.publish_refused(reports_a_send);
                }
                self.hand_back_later(delivery, channel, queue, received, generation, &e)
                    .await;
            }
        }
    }

    /// Publishes one message, confirmed. An unroutable event is counted,
    /// not an error: nobody may be listening.
    async fn publish(
        &self,
        delivery: &Delivery,
        channel: &str,
        message: Message,
    ) -> Result<(), PublishError> {
        let body = match &message.body {
            Body::Job => delivery.data.as_slice(),
            Body::New(bytes) => bytes.as_slice(),
        };
        let routed = self
            .publisher
            .publish(
                &message.exchange,
                &message.routing_key,
                body,
                message.properties,
                message.event.is_some(),
            )
            .await?;
        if let (Routed::No, Some(kind)) = (routed, message.event) {
            EventUnroutable { channel, kind }.emit(&self.metrics);
        }
        Ok(())
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
    fn unsettled(&self, channel: &str, received: Option<Instant>) {
        if received.is_some() {
            self.metrics.unsettled(channel);
        }
    }

    async fn ack(
        &self,
        delivery: &Delivery,
        channel: &str,
        received: Option<Instant>,
        report: Report,
    ) {
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            // Everything was published; the job comes back and, if it was
            // sent, the dedup memory re-publishes its event.
            warn!(error = %e, "ack failed after settle; the broker will redeliver");
            self.unsettled(channel, received);
            return;
        }
        if let Report::Polled { events } = &report {
            for kind in events {
                self.metrics.status_event(channel, *kind);
                info!(status = kind.as_str(), "delivery status published");
            }
        }
        let Some(received) = received else {
            return;
        };
        let took = received.elapsed();
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        match report {
            Report::Sent => {
                self.metrics.completed(channel, EventKind::Sent, took);
                info!(
                    outcome = EventKind::Sent.as_str(),
                    duration_ms = ms,
                    "job settled"
                );
            }
            Report::DeadLettered { reason, failure } => {
                let kind = EventKind::DeadLettered;
                self.metrics.completed(channel, kind, took);
                self.metrics.dead_lettered(channel, reason);
                info!(outcome = kind.as_str(), reason = reason.as_str(), error = %escape(&failure.message), duration_ms = ms, "job settled");
            }
            Report::Polled { .. } => {}
            Report::Delayed {
                label,
                cause,
                failure,
            } => {
                self.metrics.delayed(channel, &label);
                info!(cause = cause.as_str(), error = %escape(&failure.message), delay = %label, "still failing; retrying later from a delay queue");
            }
        }
    }
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

/// The last resort when settling itself panicked: reject the delivery
/// (counted: a job that panics settle again and again reaches the limit).
pub(crate) async fn reject_after_panic(delivery: &Delivery) {
    reject(delivery).await;
}
