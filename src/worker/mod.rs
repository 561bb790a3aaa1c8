//! The worker's lifecycle: connect, declare the topology, consume every
//! channel queue, reconnect with backoff when the broker goes away, and on
//! shutdown stop taking jobs, let those in flight finish within the grace
//! period, and close (unfinished jobs are redelivered by RabbitMQ).

use std::{
    collections::HashSet,
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
use tracing::{info, warn};

use crate::observe::emit::{Emit, SessionPanicked};
use crate::{
    broker::{self, Names, Publisher, topology},
    config::{ChannelConfig, Config},
    delivery::channel::{ChannelState, Shared},
    delivery::consumer::{
        AmqpChannel, CONSUMERS_PER_AMQP_CHANNEL, Consumer, Lane, Session, Stopped,
    },
    delivery::dedup::Dedup,
    delivery::settle::Settler,
    observe::health::Health,
    observe::metrics::Metrics,
    octopods::client::Client,
    ops::control,
    replies::{self, matcher::Matcher},
};

/// A worker ready to run: config checked, keys read, HTTP port bound.
pub struct Worker {
    shared: Arc<Shared>,
    /// The channels served: the file's, and those added at run time.
    roster: Roster,
    listener: Option<TcpListener>,
    health: Arc<Health>,
    /// With a reply-tracking channel: the receiver and the matcher.
    replies: Option<Replies>,
}

/// The replies side of a worker (docs/contract.md §15): the webhook
/// receiver's listener and routes, the slot it finds the session's
/// publisher in, and the matcher.
struct Replies {
    listener: Option<TcpListener>,
    router: Option<axum::Router>,
    publisher: tokio::sync::watch::Sender<Option<Publisher>>,
    matcher: Arc<Matcher>,
}

impl Replies {
    async fn build(
        config: &Config,
        secrets: &[Option<crate::config::ReplySecrets>],
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        if !config.tracks_replies() {
            return Ok(None);
        }
        let listener = TcpListener::bind(config.replies.listen)
            .await
            .with_context(|| format!("replies.listen: cannot bind {}", config.replies.listen))?;
        let tracked: Arc<[replies::Tracked]> = replies::tracked(config, secrets).into();
        for t in tracked.iter() {
            metrics.register_replies(&t.name);
        }
        let (publisher, slot) = tokio::sync::watch::channel(None);
        let router = replies::receiver::router(config, secrets, slot, metrics.clone());
        let matcher = Matcher {
            book: Arc::new(replies::book::Book::new(replies::longest_window(&tracked))),
            tracked,
            lookup: Arc::new(
                replies::lookup::Lookup::new(config.replies.lookup_timeout)
                    .context("cannot build the HTTP client for reply lookups")?,
            ),
            names: Names::new(&config.broker.prefix),
            metrics: metrics.clone(),
            delays: config.retry.delays.clone(),
            replica: config.replica_id(),
        };
        Ok(Some(Self {
            listener: Some(listener),
            router: Some(router),
            publisher,
            matcher: Arc::new(matcher),
        }))
    }
}

/// The end of the grace period, fixed the first time a stop needs it: the
/// whole stop shares one budget.
type Deadline = OnceLock<Instant>;

impl Worker {
    /// Checks everything that can be checked before connecting.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let keys = config.api_keys()?;
        let reply_secrets = config.reply_secrets()?;
        let roster = Roster::new(
            config
                .channels
                .iter()
                .zip(keys)
                .zip(reply_secrets.iter().cloned())
                .map(|((c, key), replies)| {
                    Arc::new(ChannelState::new(c.clone(), key, replies, &config.broker))
                }),
        );
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {}", config.http.listen))?;
        let client = Client::new(&config.octopods).context("cannot build the HTTP client")?;
        let metrics = Arc::new(Metrics::new().histograms_by_channel(config.channel_histograms()));
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
            metrics.register_channel(&c.name, c.rate_per_second, &delays, config.channels.len());
        }
        let dedup = Dedup::new(
            config.worker.dedup_capacity,
            config.worker.dedup_max_bytes,
            config.worker.dedup_ttl,
        );
        let replica_id = config.replica_id();
        let open = Semaphore::new(config.octopods.max_concurrent_requests);
        let health = Arc::new(Health::new(metrics.clone()));
        let replies = Replies::build(&config, &reply_secrets, &metrics).await?;
        Ok(Self {
            replies,
            health: health.clone(),
            shared: Arc::new(Shared {
                names: Names::new(&config.broker.prefix),
                config,
                client,
                open,
                health,
                metrics,
                dedup,
                replica_id,
                fault: None,
            }),
            roster,
            listener: Some(listener),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where the reply webhooks are received (with a reply-tracking channel).
    pub fn replies_addr(&self) -> Option<SocketAddr> {
        self.replies.as_ref()?.listener.as_ref()?.local_addr().ok()
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
        let hooks_task = self.replies.as_mut().and_then(|r| {
            let (listener, router) = (r.listener.take()?, r.router.take()?);
            Some(tokio::spawn(http::serve(
                listener,
                router,
                http_stop.clone(),
            )))
        });
        let tracker = TaskTracker::new();
        let config = &self.shared.config;
        info!(
            broker = %config.broker.nodes().into_iter().map(crate::config::redact_url).collect::<Vec<_>>().join(","),
            prefix = %config.broker.prefix,
            channels = config.channels.len(),
            octopods = %config.octopods.base_url,
            "worker starting"
        );
        let run = Run {
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            deadline: Deadline::new(),
        };
        let mut reconnect = Reconnect::new();
        while !shutdown.is_cancelled() {
            // A panic anywhere in a session (a dependency's API on a value
            // from outside) ends that session, not the replica: it is
            // logged, counted, and the session starts again after a backoff.
            let session = self.session(&run, &mut reconnect);
            let result = match AssertUnwindSafe(session).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    let message = crate::observe::logging::panic_message(panic.as_ref());
                    SessionPanicked { message: &message }.emit(&self.shared.metrics);
                    Err(anyhow::anyhow!("the session panicked"))
                }
            };
            self.shared.metrics.broker_node(None);
            self.health.set_consuming(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    let e = broker::limits::explain(e);
                    self.health.session_failed(format!("{e:#}"));
                    let delay = reconnect.next_delay();
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
        let end = run.end(config.worker.grace_period);
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
        if let Some(mut hooks) = hooks_task
            && tokio::time::timeout(Duration::from_secs(1), &mut hooks)
                .await
                .is_err()
        {
            hooks.abort();
        }
        info!("worker stopped");
        Ok(())
    }

    /// One broker session, on two connections: one consumes and acks, the
    /// other publishes, so a broker that blocks publishers (memory or disk
    /// alarm) never stops the acks. Returns `Ok` after a clean shutdown,
    /// `Err` when a connection or a consumer failed.
    async fn session(&self, run: &Run, reconnect: &mut Reconnect) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let links = Links::open(config, reconnect).await?;
        let mut events = Box::pin(futures_util::stream::select(
            links.consuming.events_listener(),
            links.publishing.events_listener(),
        ));
        declare(&links.publishing, config).await?;
        let stop = CancellationToken::new();
        let repair = Arc::new(Notify::new());
        let settler = Arc::new(Settler::new(
            Publisher::open(&links.publishing, config.publish_timeout())
                .await?
                .reporting_to(repair.clone()),
            &self.shared,
            self.health.clone(),
            stop.clone(),
        ));
        // A new session starts clean: what the last one saw died with it.
        self.health.start_clean();
        if let Some(r) = &self.replies {
            r.publisher.send_replace(Some(settler.publisher.clone()));
        }
        // Operators' commands first: a channel paused before this replica
        // started must not be consumed for a moment.
        let (_control_ch, mut commands) =
            control::subscribe(&links.consuming, &self.shared.names).await?;
        self.catch_up(&settler.publisher, &self.shared.names, &mut commands)
            .await?;
        let session = Session {
            tracker: run.tracker.clone(),
            stop: stop.clone(),
            shutdown: run.shutdown.clone(),
            subscribed: Arc::new(Semaphore::new(0)),
        };
        let mut serving = Serving::default();
        self.start_consumers(&links, &settler, &session, &mut serving)
            .await?;
        reconnect.connected(&self.shared.metrics);
        self.shared.metrics.broker_node(Some(&links.consuming_node));
        info!(node = %links.consuming_node, publishing = %links.publishing_node, "connected; subscribing to the channel queues");
        let lanes = u32::try_from(serving.consumers.len()).unwrap_or(u32::MAX);
        let mut ready = std::pin::pin!(self.ready_when_subscribed(&session.subscribed, lanes));
        let mut repaired = std::pin::pin!(repair_topology(
            &links.publishing,
            &settler,
            config,
            &repair
        ));
        let mut followed = std::pin::pin!(self.follow(&mut commands, None));
        let mut replies = std::pin::pin!(self.match_replies(&links, &settler.publisher, &stop));
        let failure = loop {
            tokio::select! {
                () = run.shutdown.cancelled() => break None,
                () = &mut ready => break None,
                e = &mut repaired => break Some(e),
                Some(joined) = serving.consumers.join_next() => match joined {
                    Ok(Stopped::Removed) => {}
                    Ok(Stopped::Broker(e)) => break Some(anyhow::Error::new(e).context("consumer failed")),
                    Ok(other) => break Some(anyhow::anyhow!("consumer stopped: {other:?}")),
                    Err(e) => break Some(anyhow::Error::new(e).context("consumer task failed")),
                },
                e = watch_connections(&mut events, links.both(), &self.health) => break Some(e),
                f = &mut followed => break Some(match f {
                    Followed::Ended(e) => e,
                    Followed::CaughtUp => anyhow::anyhow!("the control stream stopped"),
                }),
                e = &mut replies => break Some(e),
                () = self.roster.changed.notified() => {
                    if let Err(e) = self.start_consumers(&links, &settler, &session, &mut serving).await {
                        break Some(e);
                    }
                }
            }
        };
        let Serving {
            mut consumers,
            amqp_channels,
            ..
        } = serving;
        if let Some(r) = &self.replies {
            r.publisher.send_replace(None);
        }
        stop.cancel();
        self.health.set_consuming(false);
        // A graceful stop counts from the signal: cancelling the consumers
        // (one `basic.cancel` each, which a loaded broker answers slowly,
        // and a frozen one never) is part of the grace period, not before
        // it. A failing session gives them the time a close gets.
        let cancels_end = match failure {
            None => run.end(self.shared.config.worker.grace_period),
            Some(_) => crate::clock::after(broker::CLOSE_TIMEOUT),
        };
        stop_consumers(&mut consumers, cancels_end).await;
        if let Some(e) = failure {
            links.close(320, "reconnecting").await;
            return Err(e);
        }
        self.drain(run, &links, &mut events).await;
        drop(events);
        // Acks sent before a channel's close are settled by it; the
        // channels close together, within one close's wait.
        futures_util::future::join_all(
            amqp_channels
                .iter()
                .map(|amqp| broker::close_channel(amqp, "shutdown")),
        )
        .await;
        links.close(200, "shutdown").await;
        Ok(())
    }

    /// A consumer for the jobs of each channel of the roster not served yet
    /// (all of them when the session starts), and for its status checks
    /// when it tracks status, [`CONSUMERS_PER_AMQP_CHANNEL`] to an AMQP
    /// channel. A channel added at run time gets its queue declared first.
    async fn start_consumers(
        &self,
        links: &Links,
        settler: &Arc<Settler>,
        session: &Session,
        serving: &mut Serving,
    ) -> anyhow::Result<()> {
        let config = &self.shared.config;
        serving.started.retain(|_, c| !c.removed.is_cancelled());
        let new: Vec<Arc<ChannelState>> = self
            .roster
            .all()
            .into_iter()
            .filter(|c| {
                !serving
                    .started
                    .get(&c.config.name)
                    .is_some_and(|s| Arc::ptr_eq(s, c))
            })
            .collect();
        let added: Vec<ChannelConfig> = new
            .iter()
            .filter(|c| config.channel(&c.config.name).is_none())
            .map(|c| c.config.clone())
            .collect();
        let undeclared = declare_added(&links.publishing, config, &added).await;
        let mut lanes: Vec<(Lane, Arc<ChannelState>)> = Vec::new();
        for c in new {
            if undeclared.contains(&c.config.name) {
                continue;
            }
            serving.started.insert(c.config.name.clone(), c.clone());
            lanes.push((Lane::Jobs, c.clone()));
            if c.config.track_status {
                lanes.push((Lane::Status, c));
            }
        }
        // The AMQP channels these consumers need beyond the one filling,
        // opened together: one after another, the ~313 of 10,000 channels
        // took a loaded three-node cluster 21 s.
        let room = serving
            .filling
            .as_ref()
            .map_or(0, |(_, n)| CONSUMERS_PER_AMQP_CHANNEL.saturating_sub(*n));
        let needed = lanes
            .len()
            .saturating_sub(room)
            .div_ceil(CONSUMERS_PER_AMQP_CHANNEL);
        let mut opened = open_channels(&links.consuming, needed).await?.into_iter();
        for (lane, channel) in lanes {
            let amqp = match &serving.filling {
                Some((amqp, n)) if *n < CONSUMERS_PER_AMQP_CHANNEL => amqp.clone(),
                _ => {
                    let channel = match opened.next() {
                        Some(c) => c,
                        None => links.consuming.create_channel().await?,
                    };
                    serving.amqp_channels.push(channel.clone());
                    let amqp = AmqpChannel::new(channel);
                    serving.filling = Some((amqp.clone(), 0));
                    amqp
                }
            };
            if let Some((_, n)) = &mut serving.filling {
                *n = n.saturating_add(1);
            }
            let consumer = Consumer::new(
                amqp,
                lane,
                channel,
                self.shared.clone(),
                settler.clone(),
                session.clone(),
            );
            serving.consumers.spawn(consumer.run());
        }
        Ok(())
    }

    /// With a reply-tracking channel: follows the prompt stream and matches
    /// replies (when this replica's matcher is the active one) until either
    /// fails. Without one: never returns.
    async fn match_replies(
        &self,
        links: &Links,
        publisher: &Publisher,
        stop: &CancellationToken,
    ) -> anyhow::Error {
        let Some(r) = &self.replies else {
            return std::future::pending().await;
        };
        let book = r.matcher.book.clone();
        tokio::select! {
            e = book.follow(&links.consuming, &self.shared.names) => e,
            e = r.matcher.run(&links.consuming, publisher, stop.clone()) => e,
        }
    }

    /// Ready once every channel queue has our consumer; then keeps waiting.
    async fn ready_when_subscribed(&self, subscribed: &Semaphore, lanes: u32) {
        if let Ok(permits) = subscribed.acquire_many(lanes).await {
            permits.forget();
            self.health.set_consuming(true);
            info!(consumers = lanes, "consuming");
        }
        std::future::pending::<()>().await;
    }

    /// A graceful stop: no new jobs; those in flight finish within what is
    /// left of the grace period, while the broker is still followed (a
    /// block ends, a block starts).
    async fn drain<E>(&self, run: &Run, links: &Links, events: &mut E)
    where
        E: futures_util::Stream<Item = lapin::Event> + Unpin,
    {
        let tracker = &run.tracker;
        info!(
            in_flight = tracker.len(),
            "shutting down: no new jobs; finishing those in flight"
        );
        tracker.close();
        let end = run.end(self.shared.config.worker.grace_period);
        let drained = async {
            tokio::select! {
                r = tokio::time::timeout_at(end, tracker.wait()) => r.is_ok(),
                _ = watch_connections(events, links.both(), &self.health) => {
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
    }
}

/// A session's consumers: their tasks, the AMQP channels they share (the
/// last one filling up), and the channel each serves.
#[derive(Default)]
struct Serving {
    consumers: JoinSet<Stopped>,
    amqp_channels: Vec<lapin::Channel>,
    filling: Option<(Arc<AmqpChannel>, usize)>,
    started: std::collections::HashMap<String, Arc<ChannelState>>,
}

/// What every session of one run shares: the tracker its deliveries run
/// on, the process's shutdown, and the one grace deadline (set by the
/// first stop, counted once however many sessions drain).
struct Run {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    deadline: Deadline,
}

impl Run {
    fn end(&self, grace: Duration) -> Instant {
        *self.deadline.get_or_init(|| crate::clock::after(grace))
    }
}

/// The reconnect loop's state: the backoff between sessions, whether one
/// ever connected (then a new connection counts as a reconnect), and which
/// node to try first (after a lost session, the next one).
struct Reconnect {
    backoff: ExponentialBackoff,
    connected_before: bool,
    node: usize,
}

impl Reconnect {
    fn new() -> Self {
        Self {
            backoff: ExponentialBackoff {
                initial_interval: Duration::from_millis(200),
                max_interval: Duration::from_secs(10),
                max_elapsed_time: None,
                ..ExponentialBackoff::default()
            },
            connected_before: false,
            node: 0,
        }
    }

    /// A session is up: the backoff starts over, a reconnect is counted.
    fn connected(&mut self, metrics: &crate::observe::metrics::Metrics) {
        if std::mem::replace(&mut self.connected_before, true) {
            metrics.broker_reconnected();
        }
        self.backoff.reset();
    }

    fn next_delay(&mut self) -> Duration {
        self.backoff
            .next_backoff()
            .unwrap_or(Duration::from_secs(10))
    }
}

/// A session's two connections: consuming (and acking), and publishing.
struct Links {
    consuming: Connection,
    consuming_node: String,
    publishing: Connection,
    publishing_node: String,
}

impl Links {
    fn both(&self) -> [&Connection; 2] {
        [&self.consuming, &self.publishing]
    }

    /// Connects from the node `reconnect` says; the next session starts
    /// after this one's node, whatever ends it.
    async fn open(config: &Config, reconnect: &mut Reconnect) -> anyhow::Result<Self> {
        let consuming = broker::connect_from(&config.broker, "worker", reconnect.node).await?;
        reconnect.node = consuming.index.wrapping_add(1);
        let publishing =
            broker::connect_from(&config.broker, "worker-publish", consuming.index).await?;
        Ok(Self {
            consuming: consuming.connection,
            consuming_node: consuming.node,
            publishing: publishing.connection,
            publishing_node: publishing.node,
        })
    }

    /// Closes both connections together: one close's wait at most.
    async fn close(&self, code: u16, why: &str) {
        tokio::join!(
            broker::close(&self.consuming, code, why),
            broker::close(&self.publishing, code, why)
        );
    }
}

mod follow;
pub(crate) mod http;
mod roster;
use follow::Followed;
use roster::Roster;

async fn declare(conn: &Connection, config: &Config) -> anyhow::Result<()> {
    topology::declare(conn, config)
        .await
        .context("cannot declare the topology")
}

/// Declares the topology again whenever the session's publisher saw a publish
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

/// AMQP channels opening at once on a connection (their round trips
/// overlap; a `channel_max` met fails the open that meets it, as before).
const OPEN_AT_ONCE: usize = 16;

/// `n` new AMQP channels on `conn`, [`OPEN_AT_ONCE`] at a time.
async fn open_channels(conn: &Connection, n: usize) -> lapin::Result<Vec<lapin::Channel>> {
    use futures_util::TryStreamExt;
    futures_util::stream::iter(0..n)
        .map(|_| conn.create_channel())
        .buffered(OPEN_AT_ONCE)
        .try_collect()
        .await
}

/// Declares the queues of channels added at run time, all together; when
/// that fails, one channel at a time, so that one queue RabbitMQ refuses
/// (declared elsewhere with other arguments) keeps only its own channel
/// out of this session. Returns the channels not declared.
async fn declare_added(
    conn: &lapin::Connection,
    config: &Config,
    added: &[ChannelConfig],
) -> HashSet<String> {
    let mut undeclared = HashSet::new();
    if added.is_empty()
        || topology::declare_channels(conn, config, added)
            .await
            .is_ok()
    {
        return undeclared;
    }
    for channel in added {
        if let Err(e) = topology::declare_channel(conn, config, channel).await {
            warn!(channel = %channel.name, error = %e, "cannot declare an added channel's queue; not serving it in this session");
            undeclared.insert(channel.name.clone());
        }
    }
    undeclared
}

/// Waits until every consumer has cancelled on the broker (and handed back
/// what it held), until `end`; those still waiting then are dropped, and
/// what they hold goes back to the queue when the channel closes.
async fn stop_consumers(consumers: &mut JoinSet<Stopped>, end: Instant) {
    let all = async { while consumers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(end, all).await.is_err() {
        warn!(
            consumers = consumers.len(),
            "the broker did not confirm every consumer's cancel in time; what those consumers hold goes back to the queue with their channel"
        );
        consumers.shutdown().await;
    }
}

/// Follows both connections: a block or unblock of publishing, and the first
/// error, which ends the session.
async fn watch_connections(
    events: &mut (impl futures_util::Stream<Item = Event> + Unpin),
    links: [&Connection; 2],
    health: &Health,
) -> anyhow::Error {
    while let Some(event) = events.next().await {
        match event {
            Event::ConnectionBlocked(reason) => {
                warn!(reason = %crate::observe::logging::escape(&reason), "the broker blocks publishing; no requests to Octopods until it unblocks");
                health.broker_blocked(true);
            }
            Event::ConnectionUnblocked => {
                info!("the broker unblocked publishing");
                health.broker_blocked(false);
            }
            // lapin reports a channel the broker closed (a refused declare,
            // a publish to a missing exchange: AMQP's soft, channel-level
            // errors) here too, with the connection still up. Each channel's
            // owner handles its own: a consumer's stream ends, a publish fails
            // and repairs the topology, a declare says which queue. Anything
            // else (a hard error, I/O, a forced close) ends the session.
            Event::Error(e)
                if e.is_amqp_soft_error() && links.iter().all(|c| c.status().connected()) =>
            {
                warn!(error = %e, "the broker closed a channel; the connection stays");
            }
            Event::Error(e) => return anyhow::Error::new(e).context("connection lost"),
            _ => {}
        }
    }
    anyhow::anyhow!("connection events ended")
}
