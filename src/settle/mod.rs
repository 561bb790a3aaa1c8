//! The only stage that acks. The pipeline hands it a [`Settlement`] — what
//! the delivery came to — and it publishes what that causes (the result
//! event, the dead-letter copy, the delayed-retry copy) with publisher
//! confirms, then acks the delivery exactly once. If the broker refuses a
//! publish (nack, returned, timeout, a queue deleted or full) the delivery goes
//! back to its queue after a backoff, the topology is declared again, and
//! readiness shows it: nothing is acked that was not confirmed.
//!
//! - [`give_back`]: returning a delivery (a confirmed copy, the budget kept) and
//!   the backoff after refused publishes.
//! - [`publish`]: the confirmed publishes a settlement causes.
//! - [`messages`]: the pure builders of what is published (properties, headers).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    broker::{
        Flow, Names, Publisher,
        headers::{self, History},
    },
    channel::ChannelState,
    health::Health,
    job::Echo,
    metrics::Metrics,
    outcome::{EventKind, Failure, Reason, RetryCause},
    status::Check,
    telemetry::escape,
};

mod give_back;
use give_back::backoff;
mod messages;
mod publish;

pub(crate) use messages::{dead_letter_copy, delay_copy, event_properties};

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
}

/// What was published, for the closing metrics and log line.
enum Done {
    /// A status check handled.
    Polled,
    Completed(EventKind, Option<(Reason, Failure)>),
    Delayed(String, RetryCause, Failure),
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
