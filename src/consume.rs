//! Consuming a channel queue and taking each delivery through the pipeline:
//! parse ([`job`](crate::job)) → already sent? ([`dedup`](crate::dedup)) →
//! attempts ([`send`](crate::send)) → [`settle`](crate::settle).
//!
//! Concurrency is bounded by the channel's prefetch: the broker never hands
//! this consumer more unacked deliveries than that, and each runs as one task.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, error, field::Empty, info, info_span, warn};

use crate::{
    broker::{headers, topology::delay_label},
    config::{ApiKey, ChannelConfig, Config},
    dedup::{Begin, Dedup},
    events::{DeadLetteredEvent, SentEvent},
    job::{Echo, Job},
    limit::Limiter,
    metrics::{Completion, Metrics},
    octopods::Client,
    outcome::{Failure, Reason, RetryCause},
    send::{self, Final, History, Target},
    settle::{self, Settler},
};

/// A configured channel at run time.
pub struct ChannelState {
    pub config: ChannelConfig,
    pub key: ApiKey,
    pub limiter: Limiter,
    pub prefetch: u16,
}

/// What every delivery's task shares.
pub struct Shared {
    pub config: Config,
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub dedup: Dedup,
    /// This replica's name (see [`subscribe_delay`]).
    pub replica_id: String,
}

/// How long this replica waits before subscribing to `channel`'s queue: a
/// stable fraction of `window` from (replica, channel). RabbitMQ 3.10 makes the
/// first subscriber of a single-active-consumer queue the active one, so
/// replicas that start together each become active on a share of the channels.
pub fn subscribe_delay(replica: &str, channel: &str, window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica.bytes().chain([0]).chain(channel.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    window.mul_f64((h % 10_000) as f64 / 10_000.0)
}

/// What a consumer shares with its broker session.
#[derive(Clone)]
pub struct Session {
    /// Runs each delivery's task; the session drains it at shutdown.
    pub tracker: TaskTracker,
    /// Cancelled to stop taking jobs.
    pub stop: CancellationToken,
    /// Gets a permit when the consumer has subscribed (readiness).
    pub subscribed: Arc<tokio::sync::Semaphore>,
}

/// Why a consumer stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Asked to stop.
    Cancelled,
    /// The broker channel or connection failed.
    Broker(lapin::Error),
    /// The broker cancelled the consumer (queue deleted).
    ConsumerEnded,
}

/// Consumes `queue` until cancelled or the broker fails. Each delivery runs on
/// `tracker`; the consumer itself is cancelled on the broker before returning.
/// Adds a permit to `session.subscribed` once subscribed.
/// The caller keeps a clone of `amqp` open until the tracker drained: an
/// `Acker` alone does not keep its channel alive.
pub async fn consume(
    amqp: lapin::Channel,
    queue: String,
    channel: Arc<ChannelState>,
    shared: Arc<Shared>,
    settler: Arc<Settler>,
    session: Session,
) -> Stopped {
    let Session {
        tracker,
        stop,
        subscribed,
    } = session;
    if let Err(e) = amqp
        .basic_qos(channel.prefetch, BasicQosOptions::default())
        .await
    {
        return Stopped::Broker(e);
    }
    let delay = subscribe_delay(
        &shared.replica_id,
        &channel.config.name,
        shared.config.worker.spread_window,
    );
    tokio::select! {
        () = stop.cancelled() => return Stopped::Cancelled,
        () = tokio::time::sleep(delay) => {}
    }
    let tag = format!(
        "octopods-worker-{}-{}",
        shared.replica_id, channel.config.name
    );
    info!(channel = %channel.config.name, replica = %shared.replica_id, delay_ms = delay.as_millis() as u64, "subscribing");
    let mut consumer = match amqp
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return Stopped::Broker(e),
    };
    // Readiness counts subscriptions: ready once every channel has one.
    subscribed.add_permits(1);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // Stop taking jobs; those in flight still settle on this channel.
                drop(amqp.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await);
                return Stopped::Cancelled;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (ch, sh, st, stop) = (channel.clone(), shared.clone(), settler.clone(), stop.clone());
                    tracker.spawn(async move { handle(delivery, &ch, &sh, &st, &stop).await });
                }
                Some(Err(e)) => return Stopped::Broker(e),
                None => return Stopped::ConsumerEnded,
            }
        }
    }
}

/// One delivery, from receipt to ack. The settle stages are boxed: they are
/// large and short-lived, and would otherwise size every waiting job's task.
pub async fn handle(
    delivery: Delivery,
    channel: &ChannelState,
    shared: &Shared,
    settler: &Settler,
    stop: &CancellationToken,
) {
    let name = channel.config.name.as_str();
    let span = info_span!(
        "job",
        job_id = Empty,
        channel = name,
        attempt = Empty,
        phone = Empty
    );
    async {
        let received = Instant::now();
        shared.metrics.received(name);
        let (prior, delayed, first_attempt_at) = headers::history(&delivery.properties);
        let job = match Job::parse(&delivery.data, name, channel.config.provider) {
            Ok(job) => job,
            Err(rejection) => {
                if let Some(id) = &rejection.echo.job_id {
                    tracing::Span::current().record("job_id", id.as_str());
                }
                let failure = Failure::local(rejection.message);
                let attempts = prior.max(1);
                Box::pin(dead_letter(
                    &delivery,
                    channel,
                    shared,
                    settler,
                    rejection.reason,
                    failure,
                    *rejection.echo,
                    attempts,
                    received,
                ))
                .await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("job_id", job.id.as_str());
        // `Phone` displays masked: +1555***4567.
        span.record("phone", tracing::field::display(&job.phone));
        let _claim = loop {
            match shared.dedup.begin(name, job.id.as_str()) {
                Begin::Go(claim) => break claim,
                Begin::Sent(event) => {
                    info!("already sent by this worker; re-publishing its sent event instead");
                    shared.metrics.duplicate_suppressed(name);
                    Box::pin(settle_sent(
                        &delivery,
                        channel,
                        shared,
                        settler,
                        job.id.as_str(),
                        &event,
                        received,
                    ))
                    .await;
                    return;
                }
                // The same job is in flight on another delivery: wait for it.
                Begin::Wait(mut done) => drop(done.changed().await),
            }
        };
        let target = Target {
            channel: name,
            key: &channel.key,
            limiter: &channel.limiter,
            stop,
        };
        let history = History {
            attempts: prior,
            first_attempt_at,
        };
        let (result, attempts) = send::attempt(
            &job,
            &target,
            history,
            &shared.client,
            &shared.config.retry,
            &shared.metrics,
        )
        .await;
        match result {
            Final::Sent(receipt) => {
                let event = SentEvent::new(
                    job.id.as_str(),
                    name,
                    job.phone.as_str(),
                    receipt,
                    attempts,
                    job.metadata.clone(),
                    OffsetDateTime::now_utc(),
                );
                let body = serde_json::to_vec(&event).unwrap_or_default();
                // Remember before publishing: if the broker goes away now, the
                // redelivered job re-publishes this event instead of re-sending.
                shared.dedup.remember(name, job.id.as_str(), body.clone());
                Box::pin(settle_sent(
                    &delivery,
                    channel,
                    shared,
                    settler,
                    job.id.as_str(),
                    &body,
                    received,
                ))
                .await;
            }
            Final::DeadLetter(reason, failure) => {
                Box::pin(dead_letter(
                    &delivery,
                    channel,
                    shared,
                    settler,
                    reason,
                    failure,
                    job.echo(),
                    attempts,
                    received,
                ))
                .await;
            }
            Final::Delay {
                cause,
                after,
                failure,
            } => {
                let first = first_attempt_at.unwrap_or_else(|| {
                    OffsetDateTime::now_utc()
                        - time::Duration::try_from(received.elapsed()).unwrap_or_default()
                });
                Box::pin(delay(
                    &delivery, shared, settler, name, attempts, delayed, first, after, cause,
                    &failure,
                ))
                .await;
            }
            Final::Requeue => {
                info!("stopping before this job's turn; returned to its queue");
                shared.metrics.abandoned(name);
                if let Err(e) = settle::requeue(&delivery).await {
                    warn!(error = %e, "nack failed; the broker will redeliver when the channel closes");
                }
            }
        }
    }
    .instrument(span)
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn delay(
    delivery: &Delivery,
    shared: &Shared,
    settler: &Settler,
    channel: &str,
    attempts: u32,
    delayed: u32,
    first_attempt_at: OffsetDateTime,
    after: Option<std::time::Duration>,
    cause: RetryCause,
    failure: &Failure,
) {
    let Some(wait) = send::pick_delay(&shared.config.retry.delays, delayed, after) else {
        return give_back(delivery, shared, channel, "no retry delays configured").await;
    };
    let label = delay_label(wait);
    match settler
        .delay(delivery, channel, attempts, delayed, first_attempt_at, wait)
        .await
    {
        Ok(()) => {
            if let Err(e) = settle::ack(delivery).await {
                warn!(error = %e, "ack failed after handing the job to a delay queue; it may be retried twice");
            }
            shared.metrics.delayed(channel, &label);
            info!(cause = cause.as_str(), error = %failure.message, delay = %label, attempts, "still failing; retrying later from a delay queue");
        }
        Err(e) => give_back(delivery, shared, channel, &e.to_string()).await,
    }
}

async fn settle_sent(
    delivery: &Delivery,
    channel: &ChannelState,
    shared: &Shared,
    settler: &Settler,
    job_id: &str,
    event: &[u8],
    received: Instant,
) {
    let name = channel.config.name.as_str();
    let correlation = settle::correlation_id(delivery, Some(job_id));
    match settler
        .publish_event("sent", name, event, &correlation)
        .await
    {
        Ok(routed) => {
            if !routed {
                note_unroutable(shared, name, "sent");
            }
            finish(delivery, shared, name, Completion::Sent, None, received).await;
        }
        Err(e) => give_back(delivery, shared, name, &e.to_string()).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    delivery: &Delivery,
    channel: &ChannelState,
    shared: &Shared,
    settler: &Settler,
    reason: Reason,
    failure: Failure,
    echo: Echo,
    attempts: u32,
    received: Instant,
) {
    let name = channel.config.name.as_str();
    let event = DeadLetteredEvent::new(
        echo.job_id,
        name,
        reason,
        &failure,
        attempts,
        echo.metadata,
        OffsetDateTime::now_utc(),
    );
    match settler.dead_letter(delivery, name, &event, &failure).await {
        Ok(routed) => {
            if !routed {
                note_unroutable(shared, name, "dead_lettered");
            }
            shared.metrics.dead_lettered(name, reason);
            finish(
                delivery,
                shared,
                name,
                Completion::DeadLettered,
                Some((reason, &failure)),
                received,
            )
            .await;
        }
        Err(e) => give_back(delivery, shared, name, &e.to_string()).await,
    }
}

async fn finish(
    delivery: &Delivery,
    shared: &Shared,
    channel: &str,
    completion: Completion,
    failure: Option<(Reason, &Failure)>,
    received: Instant,
) {
    let took = received.elapsed();
    if let Err(e) = settle::ack(delivery).await {
        // Everything was published; the job will come back and, if it was
        // sent, the dedup memory re-publishes its event.
        warn!(error = %e, "ack failed after settle; the broker will redeliver");
        shared.metrics.abandoned(channel);
        return;
    }
    shared.metrics.completed(channel, completion, took);
    match failure {
        None => info!(
            outcome = completion.as_str(),
            duration_ms = took.as_millis() as u64,
            "job settled"
        ),
        Some((reason, f)) => info!(
            outcome = completion.as_str(),
            reason = reason.as_str(),
            error = %f.message,
            duration_ms = took.as_millis() as u64,
            "job settled"
        ),
    }
}

/// Nobody is bound to the results exchange: not an error, but worth knowing.
fn note_unroutable(shared: &Shared, channel: &str, event: &str) {
    warn!(
        event,
        "result event was unroutable: no queue bound to the results exchange"
    );
    shared.metrics.event_unroutable(channel, event);
}

async fn give_back(delivery: &Delivery, shared: &Shared, channel: &str, error: &str) {
    error!(
        error,
        "could not publish the job's result; returning it to the queue"
    );
    shared.metrics.abandoned(channel);
    if let Err(e) = settle::requeue(delivery).await {
        warn!(error = %e, "nack failed; the broker will redeliver when the channel closes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_delay_is_stable_and_within_the_window() {
        let w = Duration::from_secs(2);
        let a = subscribe_delay("worker-0", "store-eu", w);
        assert_eq!(a, subscribe_delay("worker-0", "store-eu", w));
        assert!(a < w);
        assert_eq!(
            subscribe_delay("worker-0", "store-eu", Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn subscribe_delays_spread_channels_over_replicas() {
        // With 3 replicas and 30 channels, each replica subscribes first to
        // a fair share of the channels.
        let replicas = [
            "octopods-worker-0",
            "octopods-worker-1",
            "octopods-worker-2",
        ];
        let mut firsts = [0; 3];
        for c in 0..30 {
            let ch = format!("store-{c}");
            let (winner, _) = replicas
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| subscribe_delay(r, &ch, Duration::from_secs(2)))
                .unwrap();
            firsts[winner] += 1;
        }
        assert!(firsts.iter().all(|n| *n >= 5), "{firsts:?}");
    }
}
