//! The worker's lifecycle: connect, declare the topology, consume every
//! channel queue, reconnect with backoff when the broker goes away, and on
//! shutdown stop taking jobs, let those in flight finish within the grace
//! period, and close (unfinished jobs are redelivered by RabbitMQ).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use backoff::{ExponentialBackoff, backoff::Backoff};
use futures_util::StreamExt;
use lapin::Event;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use crate::{
    broker::{self, Names, Publisher, topology},
    config::Config,
    consume::{self, ChannelState, Session, Shared, Stopped},
    dedup::Dedup,
    http,
    limit::Limiter,
    metrics::Metrics,
    octopods::Client,
    settle::Settler,
};

/// A worker ready to run: config checked, keys read, HTTP port bound.
pub struct Worker {
    shared: Arc<Shared>,
    channels: Vec<Arc<ChannelState>>,
    listener: Option<TcpListener>,
    ready: Arc<AtomicBool>,
}

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
                })
            })
            .collect();
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {}", config.http.listen))?;
        let client = Client::new(&config.octopods).context("cannot build the HTTP client")?;
        let metrics = Arc::new(Metrics::new());
        for c in &config.channels {
            metrics.register_channel(&c.name, c.rate_per_second);
        }
        let dedup = Dedup::new(config.worker.dedup_capacity, config.worker.dedup_ttl);
        let replica_id = config.replica_id();
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                client,
                metrics,
                dedup,
                replica_id,
            }),
            channels,
            listener: Some(listener),
            ready: Arc::new(AtomicBool::new(false)),
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

    /// Runs until `shutdown` is cancelled, then drains and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http_stop = CancellationToken::new();
        let router = http::router(self.shared.metrics.clone(), self.ready.clone());
        let listener = self.listener.take().context("the worker can run once")?;
        let http_task = tokio::spawn(http::serve(listener, router, http_stop.clone()));
        let tracker = TaskTracker::new();
        let config = &self.shared.config;
        info!(
            broker = %broker::redact_url(&config.broker.url),
            prefix = %config.broker.prefix,
            channels = config.channels.len(),
            octopods = %config.octopods.base_url,
            "worker starting"
        );

        let mut reconnect = ExponentialBackoff {
            initial_interval: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            let result = self
                .session(&tracker, &shutdown, &mut connected_before, &mut reconnect)
                .await;
            self.set_ready(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    let delay = reconnect.next_backoff().unwrap_or(Duration::from_secs(10));
                    warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Jobs in flight from a lost connection are redelivered by the broker;
        // wait for any stragglers anyway so their outcome is logged.
        tracker.close();
        if tokio::time::timeout(config.worker.grace_period, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                unfinished = tracker.len(),
                "grace period over; unfinished jobs are left for redelivery"
            );
        }
        http_stop.cancel();
        drop(http_task.await);
        info!("worker stopped");
        Ok(())
    }

    fn set_ready(&self, up: bool) {
        self.ready.store(up, Ordering::SeqCst);
        self.shared.metrics.broker_connected(up);
    }

    /// One broker connection: returns `Ok` after a clean shutdown, `Err` when
    /// the connection or a consumer failed.
    async fn session(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        connected_before: &mut bool,
        reconnect: &mut ExponentialBackoff,
    ) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let conn = broker::connect(&config.broker, "worker").await?;
        let mut events = Box::pin(conn.events_listener());
        let setup = conn.create_channel().await?;
        topology::declare(&setup, config)
            .await
            .context("cannot declare the topology")?;
        drop(setup.close(200, "OK".into()).await);
        let names = Names::new(&config.broker.prefix);
        let settler = Arc::new(Settler {
            publisher: Publisher::open(&conn).await?,
            names: names.clone(),
        });

        let stop = CancellationToken::new();
        let subscribed = Arc::new(tokio::sync::Semaphore::new(0));
        let mut consumers = JoinSet::new();
        let mut amqp_channels = Vec::with_capacity(self.channels.len());
        for channel in &self.channels {
            let amqp = conn.create_channel().await?;
            amqp_channels.push(amqp.clone());
            let (queue, ch, sh, st) = (
                names.channel_queue(&channel.config.name),
                channel.clone(),
                self.shared.clone(),
                settler.clone(),
            );
            let session = Session {
                tracker: tracker.clone(),
                stop: stop.clone(),
                subscribed: subscribed.clone(),
            };
            consumers
                .spawn(async move { consume::consume(amqp, queue, ch, sh, st, session).await });
        }
        if *connected_before {
            self.shared.metrics.broker_reconnected();
        }
        *connected_before = true;
        reconnect.reset();
        info!("connected; subscribing to the channel queues");
        // Ready once every channel queue has our consumer; then keep waiting.
        let channels = u32::try_from(self.channels.len()).unwrap_or(u32::MAX);
        let all_subscribed = async {
            if let Ok(permits) = subscribed.acquire_many(channels).await {
                permits.forget();
                self.set_ready(true);
                info!("consuming");
            }
            std::future::pending::<()>().await;
        };

        let failure = tokio::select! {
            () = shutdown.cancelled() => None,
            () = all_subscribed => None,
            Some(joined) = consumers.join_next() => Some(match joined {
                Ok(Stopped::Broker(e)) => anyhow::Error::new(e).context("consumer failed"),
                Ok(other) => anyhow::anyhow!("consumer stopped: {other:?}"),
                Err(e) => anyhow::Error::new(e).context("consumer task failed"),
            }),
            Some(event) = next_error(&mut events) => Some(anyhow::Error::new(event).context("connection lost")),
        };
        stop.cancel();
        self.set_ready(false);
        while consumers.join_next().await.is_some() {}
        if let Some(e) = failure {
            drop(conn.close(320, "reconnecting".into()).await);
            return Err(e);
        }

        info!(
            in_flight = tracker.len(),
            "shutting down: no new jobs; finishing those in flight"
        );
        tracker.close();
        let grace = config.worker.grace_period;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                unfinished = tracker.len(),
                grace_ms = grace.as_millis() as u64,
                "grace period over; unfinished jobs go back to the queue"
            );
        }
        drop(events);
        for amqp in &amqp_channels {
            drop(amqp.close(200, "shutdown".into()).await);
        }
        drop(
            settler
                .publisher
                .channel()
                .close(200, "shutdown".into())
                .await,
        );
        if let Err(e) = conn.close(200, "shutdown".into()).await {
            error!(error = %e, "closing the broker connection failed");
        }
        Ok(())
    }
}

async fn next_error(
    events: &mut (impl futures_util::Stream<Item = Event> + Unpin),
) -> Option<lapin::Error> {
    while let Some(event) = events.next().await {
        if let Event::Error(e) = event {
            return Some(e);
        }
    }
    None
}
