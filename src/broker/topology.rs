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

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay_label(delay))
    }
}

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
/// with whatever they hold. A name that does not exist is not an error.
pub async fn delete(ch: &Channel, config: &Config) -> Result<(), lapin::Error> {
    let plan = Plan::new(config);
    for q in &plan.queues {
        ch.queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for e in &plan.exchanges {
        ch.exchange_delete(e.name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// Declares the whole topology. Safe to run any number of times; a queue
/// that exists with other arguments fails with RabbitMQ's PRECONDITION_FAILED.
pub async fn declare(ch: &Channel, config: &Config) -> Result<(), lapin::Error> {
    let plan = Plan::new(config);
    for e in &plan.exchanges {
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
    for q in &plan.queues {
        ch.queue_declare(q.name.as_str().into(), DURABLE_QUEUE, table(&q.arguments))
            .await?;
    }
    for b in &plan.bindings {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            table(&b.arguments),
        )
        .await?;
    }
    Ok(())
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
}
