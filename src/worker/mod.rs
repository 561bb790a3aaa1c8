//! The worker's lifecycle: connect, declare the topology, consume every
//! channel queue, reconnect with backoff when the broker goes away, and on
//! shutdown stop taking jobs, let those in flight finish within the grace
//! period, and close (unfinished jobs are redelivered by RabbitMQ).

use std::{
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use backoff::{ExponentialBackoff, backoff::Backoff};
use futures_util::{FutureExt, StreamExt};
use lapin::{Connection, Event};
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use crate::{
    broker::{self, Flow, Names, Publisher, topology},
    config::Config,
    delivery::channel::{ChannelState, Shared},
    delivery::consumer::{self, Lane, Session, Stopped},
    delivery::dedup::Dedup,
    delivery::limit::Limiter,
    delivery::settle::Settler,
    observe::health::Health,
    observe::metrics::Metrics,
    octopods::client::Client,
    ops::control::{self, Override},
};

/// A worker ready to run: config checked, keys read, HTTP port bound.
pub struct Worker {
    shared: Arc<Shared>,
    channels: Vec<Arc<ChannelState>>,
    listener: Option<TcpListener>,
    health: Arc<Health>,
}

/// The end of the grace period, fixed the first time a stop needs it: the
/// whole stop shares one budget.
type Deadline = OnceLock<Instant>;

impl Worker {
    /// Checks everything that can be checked before connecting.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let keys = config.api_keys()?;
        let channels = config
            .channels
            .iter()
            .zip(keys)
            .map(|(c, key)| {
                Arc::new(ChannelState {
                    prefetch: c.effective_prefetch(&config.broker),
                    limiter: Limiter::new(c.rate_per_second, c.burst)
                        .with_recipient_interval(c.recipient_interval),
                    key,
                    config: c.clone(),
                    control: tokio::sync::watch::Sender::new(Override::default()),
                })
            })
            .collect();
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {}", config.http.listen))?;
        let client = Client::new(&config.octopods).context("cannot build the HTTP client")?;
        let metrics = Arc::new(Metrics::new());
        let delays: Vec<String> = topology::delay_queues(&config)
            .iter()
            .map(|d| topology::delay_label(*d))
            .collect();
        metrics.broker_nodes(
            &config
                .broker
                .nodes()
                .into_iter()
                .map(broker::node_label)
                .collect::<Vec<_>>(),
        );
        for c in &config.channels {
            metrics.register_channel(&c.name, c.rate_per_second, &delays);
        }
        let dedup = Dedup::new(
            config.worker.dedup_capacity,
            config.worker.dedup_max_bytes,
            config.worker.dedup_ttl,
        );
        let replica_id = config.replica_id();
        let open = Semaphore::new(config.octopods.max_concurrent_requests);
        Ok(Self {
            health: Arc::new(Health::new(metrics.clone())),
            shared: Arc::new(Shared {
                names: Names::new(&config.broker.prefix),
                config,
                client,
                open,
                flow: Arc::new(Flow::default()),
                metrics,
                dedup,
                replica_id,
                fault: None,
            }),
            channels,
            listener: Some(listener),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// For tests of the worker's own failures: `hook` runs with each parsed
    /// job's id inside the pipeline (and may panic). Before [`Worker::run`].
    #[doc(hidden)]
    pub fn inject_fault(&mut self, hook: fn(&str)) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.fault = Some(hook);
        }
    }

    /// Runs until `shutdown` is cancelled, then drains and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http_stop = CancellationToken::new();
        let router = http::router(self.shared.metrics.clone(), self.health.clone());
        let listener = self.listener.take().context("the worker can run once")?;
        let http_task = tokio::spawn(http::serve(listener, router, http_stop.clone()));
        let tracker = TaskTracker::new();
        let config = &self.shared.config;
        info!(
            broker = %config.broker.nodes().into_iter().map(crate::config::redact_url).collect::<Vec<_>>().join(","),
            prefix = %config.broker.prefix,
            channels = config.channels.len(),
            octopods = %config.octopods.base_url,
            "worker starting"
        );
        let deadline = Deadline::new();
        let mut reconnect = ExponentialBackoff {
            initial_interval: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        let mut connected_before = false;
        // Which node to try first: after a lost session, the next one.
        let mut node = 0;
        while !shutdown.is_cancelled() {
            // A panic anywhere in a session (a dependency's API on a value
            // from outside) ends that session, not the replica: it is
            // logged, counted, and the session starts again after a backoff.
            let session = self.session(
                &tracker,
                &shutdown,
                &deadline,
                &mut connected_before,
                &mut reconnect,
                &mut node,
            );
            let result = match AssertUnwindSafe(session).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    self.shared.metrics.session_panicked();
                    let message = crate::observe::logging::panic_message(panic.as_ref());
                    error!(panic = %crate::observe::logging::escape(&message), "the broker session panicked; starting it again");
                    Err(anyhow::anyhow!("the session panicked"))
                }
            };
            self.shared.metrics.broker_node(None);
            self.health.set_consuming(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    let delay = reconnect.next_backoff().unwrap_or(Duration::from_secs(10));
                    warn!(error = %format!("{e:#}"), retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "broker session ended; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Jobs in flight from a lost connection are redelivered by the broker;
        // wait for stragglers within what is left of the grace period.
        tracker.close();
        let end = *deadline.get_or_init(|| crate::clock::after(config.worker.grace_period));
        if tokio::time::timeout_at(end, tracker.wait()).await.is_err() {
            warn!(
                unfinished = tracker.len(),
                "grace period over; unfinished jobs are left for redelivery"
            );
        }
        // The metrics port never holds the process: open connections get a
        // moment to finish, then go.
        http_stop.cancel();
        let mut http_task = http_task;
        if tokio::time::timeout(Duration::from_secs(1), &mut http_task)
            .await
            .is_err()
        {
            http_task.abort();
        }
        info!("worker stopped");
        Ok(())
    }

    /// One broker session, on two connections: one consumes and acks, the
    /// other publishes, so a broker that blocks publishers (memory or disk
    /// alarm) never stops the acks. Returns `Ok` after a clean shutdown,
    /// `Err` when a connection or a consumer failed.
    async fn session(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        deadline: &Deadline,
        connected_before: &mut bool,
        reconnect: &mut ExponentialBackoff,
        node: &mut usize,
    ) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let consuming = broker::connect_from(&config.broker, "worker", *node).await?;
        // The next session starts after this node, whatever ends this one.
        *node = consuming.index.wrapping_add(1);
        let conn = consuming.connection;
        let publishing =
            broker::connect_from(&config.broker, "worker-publish", consuming.index).await?;
        let publishing_node = publishing.node;
        let publishing = publishing.connection;
        let mut events = Box::pin(futures_util::stream::select(
            conn.events_listener(),
            publishing.events_listener(),
        ));
        declare(&publishing, config).await?;
        let names = Names::new(&config.broker.prefix);
        let stop = CancellationToken::new();
        let repair = Arc::new(Notify::new());
        let settler = Arc::new(Settler::new(
            Publisher::open(&publishing, config.publish_timeout()).await?,
            &self.shared,
            self.health.clone(),
            repair.clone(),
            stop.clone(),
        ));
        // A new session starts clean: what the last one saw died with it.
        self.shared.flow.set_blocked(false);
        self.shared.flow.set_settle_failing(false);
        self.health.set_blocked(false);
        self.health.set_settle_failing(false);
        // Operators' commands first: a channel paused before this replica
        // started must not be consumed for a moment.
        let (_control_ch, mut commands) = control::subscribe(&conn, &names).await?;
        self.catch_up(&settler.publisher, &names, &mut commands)
            .await?;

        let subscribed = Arc::new(Semaphore::new(0));
        let mut consumers = JoinSet::new();
        let mut amqp_channels = Vec::with_capacity(self.channels.len());
        // A consumer for each channel's jobs, and for its status checks when
        // it tracks status; readiness waits for all of them.
        let lanes: Vec<(Lane, &Arc<ChannelState>)> = self
            .channels
            .iter()
            .flat_map(|c| {
                let status = c.config.track_status.then_some((Lane::Status, c));
                std::iter::once((Lane::Jobs, c)).chain(status)
            })
            .collect();
        for (lane, channel) in &lanes {
            let amqp = conn.create_channel().await?;
            amqp_channels.push(amqp.clone());
            let (lane, ch, sh, st) = (
                *lane,
                Arc::clone(channel),
                self.shared.clone(),
                settler.clone(),
            );
            let session = Session {
                tracker: tracker.clone(),
                stop: stop.clone(),
                shutdown: shutdown.clone(),
                subscribed: subscribed.clone(),
            };
            consumers
                .spawn(async move { consumer::consume(amqp, lane, ch, sh, st, session).await });
        }
        if *connected_before {
            self.shared.metrics.broker_reconnected();
        }
        *connected_before = true;
        reconnect.reset();
        self.shared.metrics.broker_node(Some(&consuming.node));
        info!(
            node = %consuming.node,
            publishing = %publishing_node,
            "connected; subscribing to the channel queues"
        );
        // Ready once every channel queue has our consumer; then keep waiting.
        let channels = u32::try_from(lanes.len()).unwrap_or(u32::MAX);
        let all_subscribed = async {
            if let Ok(permits) = subscribed.acquire_many(channels).await {
                permits.forget();
                self.health.set_consuming(true);
                info!("consuming");
            }
            std::future::pending::<()>().await;
        };

        let failure = tokio::select! {
            () = shutdown.cancelled() => None,
            () = all_subscribed => None,
            e = repair_topology(&publishing, &settler, config, &repair) => Some(e),
            Some(joined) = consumers.join_next() => Some(match joined {
                Ok(Stopped::Broker(e)) => anyhow::Error::new(e).context("consumer failed"),
                Ok(other) => anyhow::anyhow!("consumer stopped: {other:?}"),
                Err(e) => anyhow::Error::new(e).context("consumer task failed"),
            }),
            e = watch_connections(&mut events, &self.shared.flow, &self.health) => Some(e),
            followed = self.follow(&mut commands, None) => Some(match followed {
                Followed::Ended(e) => e,
                Followed::CaughtUp => anyhow::anyhow!("the control stream stopped"),
            }),
        };
        stop.cancel();
        self.health.set_consuming(false);
        while consumers.join_next().await.is_some() {}
        if let Some(e) = failure {
            broker::close(&conn, 320, "reconnecting").await;
            broker::close(&publishing, 320, "reconnecting").await;
            return Err(e);
        }

        info!(
            in_flight = tracker.len(),
            "shutting down: no new jobs; finishing those in flight"
        );
        tracker.close();
        let end = *deadline.get_or_init(|| crate::clock::after(config.worker.grace_period));
        // Keep following the broker while draining (a block ends, a block starts).
        let drained = async {
            tokio::select! {
                r = tokio::time::timeout_at(end, tracker.wait()) => r.is_ok(),
                _ = watch_connections(&mut events, &self.shared.flow, &self.health) => {
                    tokio::time::timeout_at(end, tracker.wait()).await.is_ok()
                }
            }
        };
        if !drained.await {
            warn!(
                unfinished = tracker.len(),
                "grace period over; unfinished jobs go back to the queue"
            );
        }
        drop(events);
        for amqp in &amqp_channels {
            broker::close_channel(amqp, "shutdown").await;
        }
        broker::close(&publishing, 200, "shutdown").await;
        broker::close(&conn, 200, "shutdown").await;
        Ok(())
    }
}

mod follow;
pub(crate) mod http;
use follow::Followed;

async fn declare(conn: &Connection, config: &Config) -> anyhow::Result<()> {
    let setup = conn.create_channel().await?;
    topology::declare(&setup, config)
        .await
        .context("cannot declare the topology")?;
    broker::close_channel(&setup, "OK").await;
    Ok(())
}

/// Declares the topology again whenever the settle stage saw a publish
/// refused (an operator deleted a queue, say), at most once a second. Returns
/// an error when the publishing channel itself was closed by the broker (a
/// deleted exchange does that): the session must start over.
async fn repair_topology(
    conn: &Connection,
    settler: &Settler,
    config: &Config,
    repair: &Notify,
) -> anyhow::Error {
    loop {
        repair.notified().await;
        if !settler.publisher.is_open() {
            return anyhow::anyhow!("the broker closed the publishing channel");
        }
        match declare(conn, config).await {
            Ok(()) => {
                match settler.publisher.renew(conn).await {
                    Ok(0) => {}
                    Ok(n) => info!(channels = n, "replaced publishing channels that saw a nack"),
                    Err(e) => {
                        return anyhow::Error::new(e).context("cannot open a publishing channel");
                    }
                }
                info!("topology declared again after a refused publish");
                settler.recovered();
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot declare the topology again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Follows both connections: a block or unblock of publishing, and the first
/// error, which ends the session.
async fn watch_connections(
    events: &mut (impl futures_util::Stream<Item = Event> + Unpin),
    flow: &Flow,
    health: &Health,
) -> anyhow::Error {
    while let Some(event) = events.next().await {
        match event {
            Event::ConnectionBlocked(reason) => {
                warn!(reason = %crate::observe::logging::escape(&reason), "the broker blocks publishing; no requests to Octopods until it unblocks");
                flow.set_blocked(true);
                health.set_blocked(true);
            }
            Event::ConnectionUnblocked => {
                info!("the broker unblocked publishing");
                flow.set_blocked(false);
                health.set_blocked(false);
            }
            Event::Error(e) => return anyhow::Error::new(e).context("connection lost"),
            _ => {}
        }
    }
    anyhow::anyhow!("connection events ended")
}
