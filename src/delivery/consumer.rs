//! Consuming a channel queue: each delivery runs as one task through
//! [`pipeline`](crate::delivery::pipeline) (a [`Settlement`] out) and then
//! [`settle`](crate::delivery::settle) (the only acks).
//!
//! Concurrency is bounded by the channel's prefetch: the broker never hands
//! this consumer more unacked deliveries than that.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span, error, field::Empty, info, info_span};

use crate::{
    config::Config,
    delivery::channel::{ChannelState, Shared},
    delivery::pipeline::{self, Delivered},
    delivery::settle::{self, Settler},
    delivery::settlement::{self, Context, Settlement},
    observe::logging::escape,
};

/// What a consumer takes: a channel's jobs, or its pending status checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Jobs,
    Status,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Jobs => "jobs",
            Lane::Status => "status",
        }
    }
}

/// How long this replica waits before subscribing to `channel`'s queue: a
/// stable fraction of `window` from (replica, channel). RabbitMQ 3.10 makes the
/// first subscriber of a single-active-consumer queue the active one, so
/// replicas that start together each become active on a share of the channels.
pub(crate) fn subscribe_delay(replica: &str, channel: &str, window: Duration) -> Duration {
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
pub(crate) struct Session {
    /// Runs each delivery's task; the session drains it at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Cancelled to stop taking jobs (the session ends: shutdown or failure).
    pub(crate) stop: CancellationToken,
    /// Cancelled when the process shuts down: told apart from `stop` so a
    /// graceful stop hands back what it holds, and a failing session (whose
    /// broker may not confirm anything) does not wait on it.
    pub(crate) shutdown: CancellationToken,
    /// Gets a permit when the consumer has subscribed (readiness).
    pub(crate) subscribed: Arc<tokio::sync::Semaphore>,
}

/// Why a consumer stopped.
#[derive(Debug)]
pub(crate) enum Stopped {
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
pub(crate) async fn consume(
    amqp: lapin::Channel,
    lane: Lane,
    channel: Arc<ChannelState>,
    shared: Arc<Shared>,
    settler: Arc<Settler>,
    session: Session,
) -> Stopped {
    let Session {
        tracker,
        stop,
        shutdown,
        subscribed,
    } = session;
    let names = crate::broker::Names::new(&shared.config.broker.prefix);
    let queue = match lane {
        Lane::Jobs => names.channel_queue(&channel.config.name),
        Lane::Status => names.status_queue(&channel.config.name),
    };
    if let Err(e) = amqp
        .basic_qos(channel.prefetch, BasicQosOptions::default())
        .await
    {
        return Stopped::Broker(e);
    }
    let name = channel.config.name.as_str();
    // A consumer tag is a short string: a long replica id is cut to fit.
    let tag = crate::broker::headers::truncate(
        format!(
            "octopods-worker-{}-{}-{name}",
            shared.replica_id,
            lane.as_str()
        ),
        255,
    );
    let (Some(queue_name), Some(tag_name)) = (
        crate::broker::headers::short(&queue),
        crate::broker::headers::short(&tag),
    ) else {
        return Stopped::ConsumerEnded;
    };
    let queue_shared: Arc<str> = Arc::from(queue.as_str());
    let mut control = channel.control.subscribe();
    // Readiness counts channels that are consuming, or paused on purpose.
    let mut counted = false;
    loop {
        // Replicas resuming a channel together meet in its queue: stagger them.
        let mut resuming = false;
        if control.borrow_and_update().paused.is_some() {
            resuming = true;
            if !std::mem::replace(&mut counted, true) {
                subscribed.add_permits(1);
            }
            info!(
                channel = name,
                "channel paused: not consuming; its jobs stay in the queue"
            );
            tokio::select! {
                () = stop.cancelled() => return Stopped::Cancelled,
                _ = control.wait_for(|o| o.paused.is_none()) => {}
            }
            info!(channel = name, "channel resumed");
        }
        // The stagger spreads the channels over replicas that start together;
        // a replica starting alone in the queue has nobody to spread with.
        let others = amqp
            .queue_declare(
                queue_name.clone(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(1, |q| q.consumer_count());
        let delay = if others == 0 && !resuming {
            Duration::ZERO
        } else {
            subscribe_delay(&shared.replica_id, name, shared.config.worker.spread_window)
        };
        tokio::select! {
            () = stop.cancelled() => return Stopped::Cancelled,
            () = tokio::time::sleep(delay) => {}
        }
        info!(channel = name, replica = %escape(&shared.replica_id), delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "subscribing");
        let mut consumer = match amqp
            .basic_consume(
                queue_name.clone(),
                tag_name.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Stopped::Broker(e),
        };
        if !std::mem::replace(&mut counted, true) {
            subscribed.add_permits(1);
        }
        // Cancelled on a pause: jobs not yet at their request go back.
        let hold = stop.child_token();
        let mut first = lane == Lane::Jobs;
        // A task per delivery, up to `tasks_cap`: deliveries beyond it wait
        // in the consumer's buffer as bytes, not as tasks (docs/contract.md §10's
        // memory bound; see `tasks_cap`).
        let tasks = Arc::new(Semaphore::new(tasks_cap(channel.prefetch, &shared.config)));
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // Stop taking jobs; those in flight still settle on this
                    // channel. At a graceful stop what was delivered but never
                    // started is handed back as confirmed copies: left to the
                    // channel's close, RabbitMQ would count each toward
                    // `x-delivery-limit`, and a replica restarted often enough
                    // would poison the jobs at the back of its prefetch. A
                    // failing session leaves them to the close: its broker
                    // may confirm nothing, and the next session must not wait.
                    drop(amqp.basic_cancel(tag_name, BasicCancelOptions::default()).await);
                    if shutdown.is_cancelled() && amqp.status().connected() {
                        hand_back_buffered(&mut consumer, &settler, &queue).await;
                    }
                    return Stopped::Cancelled;
                }
                changed = control.changed() => {
                    if changed.is_err() || control.borrow_and_update().paused.is_some() {
                        drop(amqp.basic_cancel(tag_name.clone(), BasicCancelOptions::default()).await);
                        hold.cancel();
                        // The channel stays open while paused: return what
                        // was delivered but never started.
                        hand_back_buffered(&mut consumer, &settler, &queue).await;
                        break;
                    }
                }
                permit = tasks.clone().acquire_owned(), if turn.is_none() => turn = permit.ok(),
                next = consumer.next(), if turn.is_some() => match next {
                    Some(Ok(delivery)) => {
                        if std::mem::take(&mut first) {
                            channel.became_active();
                        }
                        let (ch, sh, st, hold) = (channel.clone(), shared.clone(), settler.clone(), hold.clone());
                        let queue_name_owned = queue_shared.clone();
                        let permit = turn.take();
                        tracker.spawn(async move {
                            handle(delivery, lane, &queue_name_owned, &ch, &sh, &st, &hold).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => return Stopped::Broker(e),
                    None => return Stopped::ConsumerEnded,
                }
            }
        }
    }
}

/// Deliveries a consumer runs as tasks at once. Each task holds its parsed
/// job and its pipeline's state (a few KiB); a delivery waiting in the
/// consumer's buffer holds only its bytes. One channel can use at most all
/// the request permits, so beyond them (and a few being parsed or settled)
/// a task would only wait for a permit: more tasks buy nothing.
fn tasks_cap(prefetch: u16, config: &Config) -> usize {
    usize::from(prefetch)
        .min(config.octopods.max_concurrent_requests.saturating_add(16))
        .max(1)
}

/// After a cancel, hands back the deliveries the consumer received but never
/// started, until the broker's cancel has gone through the buffer.
async fn hand_back_buffered(consumer: &mut lapin::Consumer, settler: &Settler, queue: &str) {
    let deadline = crate::clock::after(Duration::from_secs(5));
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        settler.hand_back(&delivery, queue).await;
    }
}

/// One delivery, from receipt to ack: the pipeline decides, settle acts.
/// A panic in either still settles the delivery (never left unacked). Both
/// stages are boxed: they are large and short-lived, and would otherwise
/// size every waiting job's task.
async fn handle(
    delivery: Delivery,
    lane: Lane,
    queue: &str,
    channel: &ChannelState,
    shared: &Shared,
    settler: &Settler,
    stop: &CancellationToken,
) {
    let name = channel.config.name.as_str();
    let trace = if crate::observe::trace::on() {
        let parent = crate::observe::trace::extract(delivery.properties.headers().as_ref());
        if matches!(parent, crate::observe::trace::Parent::Malformed) {
            shared.metrics.trace_context_invalid(name);
        }
        crate::observe::trace::process_span(
            queue,
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str()),
            name,
            parent,
        )
    } else {
        Span::none()
    };
    // The log lines' span (with the masked phone), inside the exported one.
    let span = trace.in_scope(|| {
        info_span!(
            "job",
            job_id = Empty,
            channel = name,
            attempt = Empty,
            phone = Empty
        )
    });
    async {
        let input = Delivered {
            body: &delivery.data,
            properties: &delivery.properties,
            trace: &trace,
        };
        // Status checks are not jobs: they do not count as received.
        let (received, decided) = match lane {
            Lane::Jobs => {
                shared.metrics.received(name);
                if let Some(waited) = queue_wait(&delivery) {
                    shared.metrics.queue_wait(name, waited);
                }
                let d = Box::pin(pipeline::decide(input, channel, shared, stop));
                (Some(Instant::now()), futures_util::future::Either::Left(d))
            }
            Lane::Status => {
                let d = Box::pin(pipeline::poll(input, channel, shared, stop));
                (None, futures_util::future::Either::Right(d))
            }
        };
        let settlement = match AssertUnwindSafe(decided).catch_unwind().await {
            Ok(settlement) => settlement,
            Err(panic) => {
                let message = crate::observe::logging::panic_message(panic.as_ref());
                shared.metrics.panicked(name);
                error!(panic = %escape(&message), "the worker panicked on this job");
                let ctx = Context {
                    names: &shared.names,
                    channel: name,
                    job: &delivery.properties,
                    body: &delivery.data,
                    now: time::OffsetDateTime::now_utc(),
                };
                settlement::after_panic(&ctx, &message)
            }
        };
        if crate::observe::trace::on() {
            record_outcome(&trace, &settlement);
        }
        let settled = Box::pin(settler.settle(&delivery, name, queue, received, settlement));
        if let Err(panic) = AssertUnwindSafe(settled).catch_unwind().await {
            error!(panic = %escape(&crate::observe::logging::panic_message(panic.as_ref())), "settling panicked; returning the job to its queue");
            if received.is_some() {
                shared.metrics.unsettled(name);
            }
            settle::reject_after_panic(&delivery).await;
        }
    }
    .instrument(span)
    .instrument(trace.clone())
    .await;
}

/// What came of the delivery, on its exported span (a dead letter is an
/// error there, as the OTel conventions have it).
fn record_outcome(trace: &Span, settlement: &Settlement) {
    use crate::delivery::settlement::Report;
    let outcome = match settlement {
        Settlement::Publish { report, .. } => match report {
            Report::Sent => "sent",
            Report::DeadLettered { reason, .. } => {
                crate::observe::trace::failed(trace);
                reason.as_str()
            }
            Report::Delayed { .. } => "retry",
            Report::Polled { .. } => "polled",
        },
        Settlement::HandBack { .. } => "handed_back",
        Settlement::Reject { .. } => "returned",
    };
    trace.record("octopods.outcome", outcome);
}

/// How long a job waited in its queue: now less the producer's AMQP
/// `timestamp` (seconds), for a job's first delivery only (a retry copy
/// keeps the timestamp, and its wait is the retry's). A timestamp in the
/// future counts as no wait; more than 30 days as 30 days, so one producer's
/// clock cannot wreck the histogram's sum.
fn queue_wait(delivery: &Delivery) -> Option<Duration> {
    if delivery.redelivered
        || crate::broker::headers::count(
            delivery.properties.headers().as_ref(),
            crate::broker::headers::ATTEMPTS,
        )
        .is_some()
    {
        return None;
    }
    let sent = (*delivery.properties.timestamp())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let waited = Duration::from_secs(now.saturating_sub(sent));
    Some(waited.min(Duration::from_secs(30 * 24 * 3600)))
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
