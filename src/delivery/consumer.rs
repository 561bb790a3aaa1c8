//! Consuming a channel queue: the [`Consumer`] subscribes, serves, hands
//! back on pause and cancels; each delivery runs as one task, a
//! [`Handler`] (pipeline, then settle).
//!
//! Concurrency is bounded by the channel's prefetch: the broker never hands
//! this consumer more unacked deliveries than that.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info};

use crate::{
    config::Config,
    delivery::{
        channel::{ChannelState, Shared},
        handler::Handler,
        settle::Settler,
    },
    observe::logging::escape,
    ops::control::Override,
};

/// What a consumer takes: a channel's jobs, or its pending status checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Jobs,
    Status,
}

impl Lane {
    pub(super) fn as_str(self) -> &'static str {
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
    /// The channel was removed (docs/contract.md §16): what the consumer
    /// held went back to the queue.
    Removed,
}

/// One channel queue's consumer: subscribe, serve its deliveries (one task
/// each, on the session's tracker), hand back what it holds when the
/// channel is paused, wait, subscribe again; cancel on the broker when it
/// stops. The caller keeps a clone of `amqp` open until the tracker
/// drained: an `Acker` alone does not keep its channel alive.
pub(crate) struct Consumer {
    amqp: Arc<AmqpChannel>,
    lane: Lane,
    channel: Arc<ChannelState>,
    shared: Arc<Shared>,
    settler: Arc<Settler>,
    session: Session,
    queue: Arc<str>,
    queue_name: ShortString,
    tag: ShortString,
    /// Readiness counts this consumer once: consuming, or paused on purpose.
    counted: bool,
}

/// How many consumers share one AMQP channel. RabbitMQ allows a connection
/// `channel_max` channels (2,047 by default): one per consumer capped a
/// worker near 2,000 WhatsApp channels; shared, 10,000 channels with status
/// lanes take ~630 (docs/architecture.md, Many channels).
pub(crate) const CONSUMERS_PER_AMQP_CHANNEL: usize = 32;

/// An AMQP channel that several consumers share. Each subscribes with its
/// own prefetch: `basic.qos` (per consumer, RabbitMQ's meaning of
/// `global = false`) applies to the consumers created after it, so a
/// subscription is the pair qos + consume, one at a time per channel.
pub(crate) struct AmqpChannel {
    pub(crate) channel: lapin::Channel,
    subscribing: tokio::sync::Mutex<()>,
}

impl AmqpChannel {
    pub(crate) fn new(channel: lapin::Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            subscribing: tokio::sync::Mutex::new(()),
        })
    }
}

/// How serving one subscription ended.
enum Served {
    /// The channel was paused: the subscription is cancelled, what it held
    /// handed back; wait for the resume.
    Paused,
    Stopped(Stopped),
}

impl Consumer {
    pub(crate) fn new(
        amqp: Arc<AmqpChannel>,
        lane: Lane,
        channel: Arc<ChannelState>,
        shared: Arc<Shared>,
        settler: Arc<Settler>,
        session: Session,
    ) -> Self {
        let name = channel.config.name.as_str();
        let queue = match lane {
            Lane::Jobs => shared.names.channel_queue(name),
            Lane::Status => shared.names.status_queue(name),
        };
        // A consumer tag is a short string: a long replica id is cut to fit.
        let tag = crate::broker::headers::truncate(
            format!(
                "octopods-worker-{}-{}-{name}",
                shared.replica_id,
                lane.as_str()
            ),
            255,
        );
        // A queue name longer than a short string is refused by `run`.
        let short = |s: &str| crate::broker::headers::short(s).unwrap_or_default();
        Self {
            queue_name: short(&queue),
            tag: short(&tag),
            queue: Arc::from(queue.as_str()),
            amqp,
            lane,
            channel,
            shared,
            settler,
            session,
            counted: false,
        }
    }

    /// Consumes until the session stops or the broker fails; adds a permit
    /// to `session.subscribed` once subscribed (or paused).
    pub(crate) async fn run(mut self) -> Stopped {
        if self.queue_name.as_str().is_empty() || self.tag.as_str().is_empty() {
            return Stopped::ConsumerEnded;
        }
        let mut control = self.channel.control.subscribe();
        let ended = |c: &Self| {
            if c.channel.removed.is_cancelled() {
                Stopped::Removed
            } else {
                Stopped::Cancelled
            }
        };
        loop {
            let Some(resuming) = self.wait_while_paused(&mut control).await else {
                return ended(&self);
            };
            if !self.stagger(resuming).await {
                return ended(&self);
            }
            let consumer = match self.subscribe().await {
                Ok(c) => c,
                Err(e) => return Stopped::Broker(e),
            };
            match self.serve(consumer, &mut control).await {
                Served::Paused => {}
                Served::Stopped(why) => return why,
            }
        }
    }

    fn count_ready(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.session.subscribed.add_permits(1);
        }
    }

    /// While the channel is paused, waits for its resume. `Some(true)` when
    /// it was paused (replicas resuming together meet in the queue: the
    /// subscription is staggered), `None` when the session stops meanwhile.
    async fn wait_while_paused(
        &mut self,
        control: &mut tokio::sync::watch::Receiver<Override>,
    ) -> Option<bool> {
        if control.borrow_and_update().paused.is_none() {
            return Some(false);
        }
        self.count_ready();
        let name = self.channel.config.name.as_str();
        info!(
            channel = name,
            "channel paused: not consuming; its jobs stay in the queue"
        );
        tokio::select! {
            () = self.session.stop.cancelled() => return None,
            () = self.channel.removed.cancelled() => return None,
            _ = control.wait_for(|o| o.paused.is_none()) => {}
        }
        info!(channel = name, "channel resumed");
        Some(true)
    }

    /// Waits this replica's share of the spread window before subscribing
    /// (not when it starts alone in the queue: nobody to spread with).
    /// `false` when the session stops meanwhile.
    async fn stagger(&self, resuming: bool) -> bool {
        let others = self
            .amqp
            .channel
            .queue_declare(
                self.queue_name.clone(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(1, |q| q.consumer_count());
        let name = self.channel.config.name.as_str();
        let delay = if others == 0 && !resuming {
            Duration::ZERO
        } else {
            let window = self.shared.config.worker.spread_window;
            subscribe_delay(&self.shared.replica_id, name, window)
        };
        tokio::select! {
            () = self.session.stop.cancelled() => return false,
            () = self.channel.removed.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        // One line per channel at a session's start would be 10,000 on a
        // platform: there the session's `consuming` line says how many.
        if resuming {
            info!(channel = name, replica = %escape(&self.shared.replica_id), delay_ms, "subscribing again after a resume");
        } else {
            debug!(channel = name, replica = %escape(&self.shared.replica_id), delay_ms, "subscribing");
        }
        true
    }

    /// This channel's prefetch, then the subscription, with no other
    /// consumer of the shared AMQP channel subscribing in between.
    async fn subscribe(&mut self) -> Result<lapin::Consumer, lapin::Error> {
        let consumer = {
            let _turn = self.amqp.subscribing.lock().await;
            let amqp = &self.amqp.channel;
            amqp.basic_qos(self.channel.prefetch, BasicQosOptions::default())
                .await?;
            amqp.basic_consume(
                self.queue_name.clone(),
                self.tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?
        };
        self.count_ready();
        Ok(consumer)
    }

    /// Serves one subscription: a task per delivery, up to [`tasks_cap`]
    /// (deliveries beyond it wait in the consumer's buffer as bytes, not as
    /// tasks: docs/contract.md §10's memory bound), until the session stops,
    /// the channel is paused, or the broker ends it. The rare, large steps
    /// (a stop, a hand-back: they publish) are boxed: every idle consumer
    /// keeps this future, and with thousands of channels its size is much
    /// of the worker's memory per channel.
    async fn serve(
        &self,
        mut consumer: lapin::Consumer,
        control: &mut tokio::sync::watch::Receiver<Override>,
    ) -> Served {
        // Cancelled on a pause: jobs not yet at their request go back.
        let hold = self.session.stop.child_token();
        let mut first = self.lane == Lane::Jobs;
        let cap = tasks_cap(self.channel.prefetch, &self.shared.config);
        let tasks = Arc::new(Semaphore::new(cap));
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                () = self.session.stop.cancelled() => {
                    Box::pin(self.stop(&mut consumer)).await;
                    return Served::Stopped(Stopped::Cancelled);
                }
                () = self.channel.removed.cancelled() => {
                    self.cancel().await;
                    hold.cancel();
                    Box::pin(hand_back_buffered(&mut consumer, &self.settler, &self.queue)).await;
                    info!(channel = self.channel.config.name.as_str(), lane = self.lane.as_str(), "channel removed: not consuming; its jobs stay in the queue");
                    return Served::Stopped(Stopped::Removed);
                }
                changed = control.changed() => {
                    if changed.is_err() || control.borrow_and_update().paused.is_some() {
                        self.cancel().await;
                        hold.cancel();
                        // The channel stays open while paused: hand back
                        // what was delivered but never started.
                        Box::pin(hand_back_buffered(&mut consumer, &self.settler, &self.queue)).await;
                        return Served::Paused;
                    }
                }
                permit = tasks.clone().acquire_owned(), if turn.is_none() => turn = permit.ok(),
                next = consumer.next(), if turn.is_some() => match next {
                    Some(Ok(delivery)) => {
                        if std::mem::take(&mut first) {
                            self.channel.became_active();
                        }
                        let handler = self.handler(delivery, hold.clone());
                        let permit = turn.take();
                        self.session.tracker.spawn(async move {
                            handler.run().await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => return Served::Stopped(Stopped::Broker(e)),
                    None => return Served::Stopped(Stopped::ConsumerEnded),
                }
            }
        }
    }

    fn handler(&self, delivery: Delivery, hold: CancellationToken) -> Handler {
        Handler {
            delivery,
            lane: self.lane,
            queue: self.queue.clone(),
            channel: self.channel.clone(),
            shared: self.shared.clone(),
            settler: self.settler.clone(),
            stop: hold,
        }
    }

    async fn cancel(&self) {
        let options = BasicCancelOptions::default();
        drop(
            self.amqp
                .channel
                .basic_cancel(self.tag.clone(), options)
                .await,
        );
    }

    /// Stops taking jobs; those in flight still settle on this channel. At
    /// a graceful stop what was delivered but never started is handed back
    /// as confirmed copies: left to the channel's close, RabbitMQ would
    /// count each toward `x-delivery-limit`, and a replica restarted often
    /// enough would poison the jobs at the back of its prefetch. A failing
    /// session leaves them to the close: its broker may confirm nothing,
    /// and the next session must not wait.
    async fn stop(&self, consumer: &mut lapin::Consumer) {
        self.cancel().await;
        if self.session.shutdown.is_cancelled() && self.amqp.channel.status().connected() {
            hand_back_buffered(consumer, &self.settler, &self.queue).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, R>(_: fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every channel's consumer keeps its `run` future for the worker's
    /// life: with 10,000 channels, each KiB of it is 10 MiB of RSS.
    #[test]
    fn a_consumer_future_stays_small() {
        let size = returned_size(Consumer::run);
        eprintln!("Consumer::run future: {size} bytes");
        assert!(size <= 2048, "Consumer::run's future is {size} bytes");
    }

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
