//! The broker topology of docs/contract.md §2 and §14: names derived from one
//! prefix, an idempotent declaration of every exchange, queue and binding,
//! and its deletion (for tests, benchmarks and tearing a prefix down).
//!
//! Every queue is a quorum queue (replicated, on a single node too). Where
//! RabbitMQ moves jobs itself — a channel queue dead-lettering a poison job,
//! a retry queue expiring a job back to its channel queue — it does so
//! at-least-once (`x-dead-letter-strategy`, which needs `x-overflow =
//! reject-publish`): a job whose target is missing or full stays where it
//! is instead of being dropped.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::Config;

/// Every name in the topology, from the prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn channel_queue(&self, channel: &str) -> String {
        format!("{}.jobs.{channel}", self.prefix)
    }

    /// The channel whose queue this is, if it is one of ours.
    pub fn channel_of_queue<'a>(&self, queue: &'a str) -> Option<&'a str> {
        queue.strip_prefix(&self.prefix)?.strip_prefix(".jobs.")
    }

    pub fn unroutable(&self) -> String {
        format!("{}.unroutable", self.prefix)
    }

    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// Pending status checks of a channel's sent messages (docs/contract.md §12).
    pub fn status_queue(&self, channel: &str) -> String {
        format!("{}.status.{channel}", self.prefix)
    }

    /// The stream of channel commands (pause, resume, rate; docs/contract.md §13).
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Customer messages from the inbox webhooks, waiting for the matcher
    /// (docs/contract.md §15).
    pub fn replies(&self) -> String {
        format!("{}.replies", self.prefix)
    }

    /// The stream of sent prompts and published replies: what the matcher knows.
    pub fn prompts(&self) -> String {
        format!("{}.prompts", self.prefix)
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay_label(delay))
    }
}

/// How long the prompt stream keeps a record: a day more than the longest
/// reply window ([`crate::config::MAX_WINDOW`]).
pub const PROMPTS_MAX_AGE: &str = "31D";

/// Every delay queue: the retry schedule, the paused-template delay, and
/// the status schedule when a channel tracks status.
pub fn delay_queues(config: &Config) -> Vec<Duration> {
    let mut all = config.retry.delays.clone();
    all.push(config.retry.paused_delay);
    if config.channels.iter().any(|c| c.track_status) {
        all.extend(config.status.schedule.iter().copied());
    }
    all.sort_unstable();
    all.dedup_by_key(|d| delay_label(*d));
    all
}

/// `10s`, `1m`, `5m`, `30m`, `1h`: the delay as the queue-name suffix.
pub fn delay_label(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A queue or exchange argument, as both AMQP and definitions JSON spell it.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl Arg {
    fn amqp(&self) -> AMQPValue {
        match self {
            Arg::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
            Arg::Bool(b) => AMQPValue::Boolean(*b),
        }
    }

    /// The value as RabbitMQ's definitions file writes it.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Arg::Text(s) => s.as_str().into(),
            Arg::Int(i) => (*i).into(),
            Arg::Bool(b) => (*b).into(),
        }
    }
}

/// Named arguments, in declaration order.
pub type Args = Vec<(&'static str, Arg)>;

fn text(s: &str) -> Arg {
    Arg::Text(s.to_owned())
}

fn table(args: &Args) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.amqp());
    }
    t
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub name: String,
    /// `direct`, `topic`, `fanout` or `headers`.
    pub kind: &'static str,
    pub arguments: Args,
}

/// A durable queue (quorum or stream: see `x-queue-type`).
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub name: String,
    pub arguments: Args,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub arguments: Args,
}

/// The whole topology for a config: what [`declare`] declares, what
/// [`delete`] deletes and what `octopods-worker definitions` writes — one
/// list, so the broker, the deploy files and the code cannot disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<Queue>,
    pub bindings: Vec<Binding>,
}

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// A quorum queue's arguments: the type, the initial number of replicas if
/// configured (else RabbitMQ puts one on every node), then `extra`.
fn quorum(replicas: Option<u16>, extra: Args) -> Args {
    let mut pairs = vec![("x-queue-type", text("quorum"))];
    if let Some(r) = replicas {
        pairs.push(("x-quorum-initial-group-size", Arg::Int(i64::from(r))));
    }
    pairs.extend(extra);
    pairs
}

/// At-least-once dead-lettering to `exchange` (RabbitMQ ≥ 3.10).
fn at_least_once(exchange: &str) -> Args {
    vec![
        ("x-dead-letter-exchange", text(exchange)),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ]
}

impl Plan {
    /// The plan for the broker `server` is: RabbitMQ 4.0 gives every quorum
    /// queue without one a delivery limit of 20 and counts every return
    /// toward it, so the queues that are read and handed back (the dead
    /// letters by every `dlq` command and console view, pending status
    /// checks, results, unroutable jobs) would lose their messages, with no
    /// dead-letter exchange to catch them. There they get `-1`, no limit —
    /// what they have on 3.x. Not on 3.x itself: 3.10 takes `-1` as a limit
    /// every first return passes.
    pub fn for_server(mut self, server: super::ServerVersion) -> Self {
        if server.counts_every_return() {
            for q in &mut self.queues {
                let quorum = q
                    .arguments
                    .iter()
                    .any(|(k, v)| *k == "x-queue-type" && *v == text("quorum"));
                let limited = q.arguments.iter().any(|(k, _)| *k == "x-delivery-limit");
                if quorum && !limited {
                    q.arguments.push(("x-delivery-limit", Arg::Int(-1)));
                }
            }
        }
        self
    }

    /// The topology `config` needs.
    pub fn new(config: &Config) -> Self {
        let n = Names::new(&config.broker.prefix);
        let replicas = config.broker.replicas;
        let exchange = |name: String, kind, arguments| Exchange {
            name,
            kind,
            arguments,
        };
        let queue = |name: String, arguments| Queue { name, arguments };
        let bind = |exchange: String, queue: String, routing_key: &str, arguments| Binding {
            exchange,
            queue,
            routing_key: routing_key.to_owned(),
            arguments,
        };
        let mut plan = Plan {
            exchanges: vec![
                // Jobs no channel queue takes land in the unroutable queue.
                exchange(n.unroutable(), "fanout", vec![]),
                exchange(
                    n.jobs_exchange(),
                    "direct",
                    vec![("alternate-exchange", text(&n.unroutable()))],
                ),
                exchange(n.dead(), "topic", vec![]),
                exchange(n.results(), "topic", vec![]),
                // Delayed retries: a headers exchange picks the delay queue by
                // the `octopods-retry-delay` header; the queue's TTL expires
                // the message back through the default exchange to the routing
                // key it was published with, the channel queue's name.
                exchange(n.retry_exchange(), "headers", vec![]),
            ],
            queues: vec![
                queue(n.unroutable(), quorum(replicas, vec![])),
                queue(n.dead(), quorum(replicas, vec![])),
            ],
            bindings: vec![
                bind(n.unroutable(), n.unroutable(), "", vec![]),
                bind(n.dead(), n.dead(), "#", vec![]),
            ],
        };
        if config.results.declare_queue {
            plan.queues
                .push(queue(n.results(), quorum(replicas, vec![])));
            plan.bindings
                .push(bind(n.results(), n.results(), "#", vec![]));
        }
        // Runtime control: a stream every replica reads whole, then follows.
        // A stream is read from the replica on the reader's own node ("does
        // not have a running local replica" otherwise), so it keeps
        // RabbitMQ's default of a replica on every node, whatever
        // `broker.replicas` says.
        plan.queues
            .push(queue(n.control(), vec![("x-queue-type", text("stream"))]));
        if config.tracks_replies() {
            // Replies (docs/contract.md §15): one matcher active at a time
            // reads the queue; every replica reads the prompt stream (kept a
            // day past the longest window), which also takes every `replied`
            // and `reply_ambiguous` event, so a reply answered once is known.
            plan.queues.push(queue(
                n.replies(),
                quorum(
                    replicas,
                    vec![("x-single-active-consumer", Arg::Bool(true))],
                ),
            ));
            plan.queues.push(queue(
                n.prompts(),
                vec![
                    ("x-queue-type", text("stream")),
                    ("x-max-age", text(PROMPTS_MAX_AGE)),
                ],
            ));
            for event in ["replied.*", "reply_ambiguous.*"] {
                plan.bindings
                    .push(bind(n.results(), n.prompts(), event, vec![]));
            }
        }
        for delay in delay_queues(config) {
            let q = n.retry_queue(delay);
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let mut extra = vec![("x-message-ttl", Arg::Int(ttl))];
            extra.extend(at_least_once(""));
            plan.queues.push(queue(q.clone(), quorum(replicas, extra)));
            plan.bindings.push(bind(
                n.retry_exchange(),
                q,
                "",
                vec![
                    ("x-match", text("all")),
                    (super::headers::DELAY, text(&delay_label(delay))),
                ],
            ));
        }
        // One quorum queue per channel, one consumer active at a time.
        for c in &config.channels {
            let q = n.channel_queue(&c.name);
            let mut extra = vec![
                ("x-single-active-consumer", Arg::Bool(true)),
                (
                    "x-delivery-limit",
                    Arg::Int(i64::from(config.broker.delivery_limit)),
                ),
                (
                    "x-dead-letter-routing-key",
                    text(&format!("poison.{}", c.name)),
                ),
            ];
            extra.extend(at_least_once(&n.dead()));
            plan.queues.push(queue(q.clone(), quorum(replicas, extra)));
            plan.bindings
                .push(bind(n.jobs_exchange(), q, &c.name, vec![]));
        }
        // Pending status checks: one active consumer too, so the replica
        // that sends for the channel also polls for it, on the same budget.
        for c in config.channels.iter().filter(|c| c.track_status) {
            plan.queues.push(queue(
                n.status_queue(&c.name),
                quorum(
                    replicas,
                    vec![("x-single-active-consumer", Arg::Bool(true))],
                ),
            ));
        }
        plan
    }
}

/// Every queue of the topology, in declaration order.
pub fn queues(config: &Config) -> Vec<String> {
    Plan::new(config)
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect()
}

/// Every exchange of the topology.
pub fn exchanges(config: &Config) -> Vec<String> {
    Plan::new(config)
        .exchanges
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// Deletes every queue and exchange of the topology (what `declare` made),
/// with whatever they hold, [`LANES`] queues at once as `declare` makes
/// them. A name that does not exist is not an error.
pub async fn delete(conn: &lapin::Connection, config: &Config) -> Result<(), lapin::Error> {
    let plan = Plan::new(config);
    let lane = plan.queues.len().div_ceil(LANES).max(1);
    futures_util::future::try_join_all(
        plan.queues
            .chunks(lane)
            .map(|queues| delete_queues(conn, queues.iter().map(|q| q.name.as_str()))),
    )
    .await?;
    let ch = conn.create_channel().await?;
    for e in &plan.exchanges {
        ch.exchange_delete(e.name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    drop(ch.close(200, "OK".into()).await);
    Ok(())
}

/// One lane of [`delete`]: `queues`, one after another, on a channel of
/// its own.
pub async fn delete_queues(
    conn: &lapin::Connection,
    queues: impl IntoIterator<Item = &str>,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    for q in queues {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await?;
    }
    drop(ch.close(200, "OK".into()).await);
    Ok(())
}

/// Declares the whole topology. Safe to run any number of times; a queue
/// that exists with other arguments fails with RabbitMQ's PRECONDITION_FAILED.
/// Declares the topology on `conn`, for the RabbitMQ it talks to: on 4.0
/// and later every quorum queue without a delivery limit of its own is
/// declared with `x-delivery-limit: -1` ([`Plan::for_server`]). A queue an
/// earlier version declared without it cannot take it now (RabbitMQ
/// refuses an inequivalent argument); it is declared as it is, and the log
/// says what to set instead.
pub async fn declare(conn: &lapin::Connection, config: &Config) -> Result<(), lapin::Error> {
    declare_plan(conn, Plan::new(config)).await
}

/// Declares one channel's queues and its binding: a channel added at run
/// time (docs/contract.md §16), with what `declare` gives a configured one.
pub async fn declare_channel(
    conn: &lapin::Connection,
    config: &Config,
    channel: &crate::config::ChannelConfig,
) -> Result<(), lapin::Error> {
    declare_channels(conn, config, std::slice::from_ref(channel)).await
}

/// [`declare_channel`] for many channels at once, [`LANES`] queues at a
/// time as `declare` does: a replica that starts with thousands of
/// channels added at run time declares them together.
pub async fn declare_channels(
    conn: &lapin::Connection,
    config: &Config,
    channels: &[crate::config::ChannelConfig],
) -> Result<(), lapin::Error> {
    let n = Names::new(&config.broker.prefix);
    let these = Config {
        channels: channels.to_vec(),
        ..config.clone()
    };
    let mut plan = Plan::new(&these);
    let ours: std::collections::HashSet<String> = channels
        .iter()
        .flat_map(|c| [n.channel_queue(&c.name), n.status_queue(&c.name)])
        .collect();
    plan.exchanges.clear();
    plan.queues.retain(|q| ours.contains(&q.name));
    plan.bindings.retain(|b| ours.contains(&b.queue));
    declare_plan(conn, plan).await
}

/// Binds a channel's queue to the jobs exchange (`bind`), or unbinds it:
/// jobs for it then go to the unroutable queue.
pub async fn route_channel(
    ch: &Channel,
    names: &Names,
    channel: &str,
    bind: bool,
) -> Result<(), lapin::Error> {
    let queue = names.channel_queue(channel);
    let exchange = names.jobs_exchange();
    if bind {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            channel.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    } else {
        ch.queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            channel.into(),
            FieldTable::default(),
        )
        .await
    }
}

/// Declares at most this many queues (and bindings) at once, each lane on
/// its own AMQP channel: RabbitMQ starts every quorum queue as a Raft group
/// of its own, and declared one after another 10,000 of them took 3.7 min
/// on one node here.
const LANES: usize = 8;

async fn declare_plan(conn: &lapin::Connection, plan: Plan) -> Result<(), lapin::Error> {
    let server = super::ServerVersion::of(conn);
    let plan = plan.for_server(server);
    if !plan.exchanges.is_empty() {
        declare_exchanges(conn, &plan.exchanges).await?;
    }
    let lane = |n: usize| n.div_ceil(LANES).max(1);
    futures_util::future::try_join_all(
        plan.queues
            .chunks(lane(plan.queues.len()))
            .map(|queues| declare_queues(conn, queues, server)),
    )
    .await?;
    futures_util::future::try_join_all(
        plan.bindings
            .chunks(lane(plan.bindings.len()))
            .map(|bindings| declare_bindings(conn, bindings)),
    )
    .await?;
    Ok(())
}

/// The exchanges of a plan, one after another on a channel of their own.
async fn declare_exchanges(
    conn: &lapin::Connection,
    exchanges: &[Exchange],
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    for e in exchanges {
        let kind = match e.kind {
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Direct,
        };
        ch.exchange_declare(
            e.name.as_str().into(),
            kind,
            DURABLE_EXCHANGE,
            table(&e.arguments),
        )
        .await?;
    }
    drop(ch.close(200, "OK".into()).await);
    Ok(())
}

/// One lane of [`declare_plan`]: `queues`, one after another, on a channel
/// of its own.
async fn declare_queues(
    conn: &lapin::Connection,
    queues: &[Queue],
    server: super::ServerVersion,
) -> Result<(), lapin::Error> {
    let mut ch = conn.create_channel().await?;
    for q in queues {
        let declared = ch
            .queue_declare(q.name.as_str().into(), DURABLE_QUEUE, table(&q.arguments))
            .await;
        match declared {
            Ok(_) => {}
            Err(e) if inequivalent_delivery_limit(&e) => {
                // The failed declare closed the channel.
                ch = conn.create_channel().await?;
                let kept: Args = q
                    .arguments
                    .iter()
                    .filter(|(k, _)| *k != "x-delivery-limit")
                    .cloned()
                    .collect();
                ch.queue_declare(q.name.as_str().into(), DURABLE_QUEUE, table(&kept))
                    .await?;
                tracing::warn!(
                    queue = %q.name,
                    "this queue was declared without a delivery limit, and RabbitMQ {server} gives it \
                     20: every 20th return (each dlq command or console view returns what it read) \
                     would drop its messages. Set one with a policy: rabbitmqctl set_policy \
                     octopods-unlimited '^{}$' '{{\"delivery-limit\":-1}}' --apply-to quorum_queues \
                     (docs/operations.md, RabbitMQ versions)",
                    regex_quote(&q.name)
                );
            }
            Err(e) => return Err(e),
        }
    }
    drop(ch.close(200, "OK".into()).await);
    Ok(())
}

/// One lane of bindings, on a channel of its own.
async fn declare_bindings(
    conn: &lapin::Connection,
    bindings: &[Binding],
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    for b in bindings {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            table(&b.arguments),
        )
        .await?;
    }
    drop(ch.close(200, "OK".into()).await);
    Ok(())
}

/// RabbitMQ refused a declare because the queue exists with another
/// (or no) `x-delivery-limit`.
fn inequivalent_delivery_limit(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("PRECONDITION_FAILED") && text.contains("x-delivery-limit")
}

/// `name` as a regular expression matching only itself.
fn regex_quote(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let n = Names::new("octopods");
        assert_eq!(n.jobs_exchange(), "octopods.jobs");
        assert_eq!(n.channel_queue("store-eu"), "octopods.jobs.store-eu");
        assert_eq!(
            n.channel_of_queue("octopods.jobs.store-eu"),
            Some("store-eu")
        );
        assert_eq!(n.unroutable(), "octopods.unroutable");
        assert_eq!(n.dead(), "octopods.dead");
        assert_eq!(n.results(), "octopods.results");
        assert_eq!(n.control(), "octopods.control");
        assert_eq!(n.retry_queue(Duration::from_secs(10)), "octopods.retry.10s");
        assert_eq!(n.retry_queue(Duration::from_secs(60)), "octopods.retry.1m");
        assert_eq!(
            n.retry_queue(Duration::from_secs(1800)),
            "octopods.retry.30m"
        );
        assert_eq!(
            n.retry_queue(Duration::from_millis(1500)),
            "octopods.retry.1500ms"
        );
    }

    #[test]
    fn on_4x_every_quorum_queue_has_an_explicit_delivery_limit_and_on_3x_none_is_added() {
        let config = crate::config::Config::from_toml(
            "[broker]\nprefix = \"o\"\n[[channels]]\nname = \"eu\"\napi_key_file = \"/k\"\n\
             rate_per_second = 1\nburst = 1\ntrack_status = true\n",
        )
        .unwrap();
        let limit = |plan: &Plan, q: &str| {
            plan.queues
                .iter()
                .find(|x| x.name == q)
                .and_then(|x| x.arguments.iter().find(|(k, _)| *k == "x-delivery-limit"))
                .map(|(_, v)| v.clone())
        };
        let v3 = Plan::new(&config).for_server(crate::broker::ServerVersion::parse("3.10.8"));
        let v4 = Plan::new(&config).for_server(crate::broker::ServerVersion::parse("4.0.5"));
        for q in [
            "o.dead",
            "o.unroutable",
            "o.results",
            "o.status.eu",
            "o.retry.10s",
        ] {
            assert_eq!(limit(&v3, q), None, "{q} on 3.10");
            assert_eq!(limit(&v4, q), Some(Arg::Int(-1)), "{q} on 4.0");
        }
        // The channel queues keep the configured limit on both.
        let configured = Some(Arg::Int(i64::from(config.broker.delivery_limit)));
        assert_eq!(limit(&v3, "o.jobs.eu"), configured);
        assert_eq!(limit(&v4, "o.jobs.eu"), configured);
        // A stream has no delivery limit.
        assert_eq!(limit(&v4, "o.control"), None);
    }

    #[test]
    fn server_versions_read_from_what_the_broker_says() {
        use crate::broker::ServerVersion;
        assert_eq!(
            ServerVersion::parse("3.10.8"),
            ServerVersion {
                major: 3,
                minor: 10
            }
        );
        assert_eq!(
            ServerVersion::parse("4.3.0-rc.1"),
            ServerVersion { major: 4, minor: 3 }
        );
        assert_eq!(ServerVersion::parse("garbage"), ServerVersion::default());
        assert!(!ServerVersion::parse("3.13.7").counts_every_return());
        assert!(ServerVersion::parse("4.0.5").counts_every_return());
    }

    #[test]
    fn a_queue_name_is_quoted_for_a_policy_pattern() {
        assert_eq!(regex_quote("octopods.dead"), "octopods\\.dead");
    }
}
