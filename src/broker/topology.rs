//! The broker topology of CONTRACT §2 and §14: names derived from one
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

    /// Pending status checks of a channel's sent messages (CONTRACT §12).
    pub fn status_queue(&self, channel: &str) -> String {
        format!("{}.status.{channel}", self.prefix)
    }

    /// The stream of channel commands (pause, resume, rate; CONTRACT §13).
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay_label(delay))
    }
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

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
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
fn quorum(replicas: Option<u16>, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", text("quorum"))];
    if let Some(r) = replicas {
        pairs.push((
            "x-quorum-initial-group-size",
            AMQPValue::LongLongInt(i64::from(r)),
        ));
    }
    pairs.extend(extra.iter().cloned());
    args(&pairs)
}

/// At-least-once dead-lettering to `exchange` (RabbitMQ ≥ 3.10).
fn at_least_once(exchange: &str) -> [(&'static str, AMQPValue); 3] {
    [
        ("x-dead-letter-exchange", text(exchange)),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ]
}

/// Every queue of the topology, in declaration order.
pub fn queues(config: &Config) -> Vec<String> {
    let n = Names::new(&config.broker.prefix);
    let mut q = vec![n.unroutable(), n.dead(), n.results(), n.control()];
    q.extend(config.delay_queues().iter().map(|d| n.retry_queue(*d)));
    q.extend(config.channels.iter().map(|c| n.channel_queue(&c.name)));
    q.extend(
        config
            .channels
            .iter()
            .filter(|c| c.track_status)
            .map(|c| n.status_queue(&c.name)),
    );
    q
}

/// Every exchange of the topology.
pub fn exchanges(config: &Config) -> Vec<String> {
    let n = Names::new(&config.broker.prefix);
    vec![
        n.unroutable(),
        n.jobs_exchange(),
        n.dead(),
        n.results(),
        n.retry_exchange(),
    ]
}

/// Deletes every queue and exchange of the topology (what `declare` made),
/// with whatever they hold. A name that does not exist is not an error.
pub async fn delete(ch: &Channel, config: &Config) -> Result<(), lapin::Error> {
    for q in queues(config) {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for e in exchanges(config) {
        ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// Declares the whole topology. Safe to run any number of times; a queue
/// that exists with other arguments fails with RabbitMQ's PRECONDITION_FAILED.
pub async fn declare(ch: &Channel, config: &Config) -> Result<(), lapin::Error> {
    let retry_delays = &config.delay_queues();
    let replicas = config.broker.replicas;
    let n = Names::new(&config.broker.prefix);
    let none = FieldTable::default;

    // Unroutable jobs: fanout exchange + queue.
    ch.exchange_declare(
        n.unroutable().into(),
        ExchangeKind::Fanout,
        DURABLE_EXCHANGE,
        none(),
    )
    .await?;
    ch.queue_declare(n.unroutable().into(), DURABLE_QUEUE, quorum(replicas, &[]))
        .await?;
    ch.queue_bind(
        n.unroutable().into(),
        n.unroutable().into(),
        "".into(),
        QueueBindOptions::default(),
        none(),
    )
    .await?;

    // Jobs exchange, falling back to the unroutable exchange.
    let alt = args(&[("alternate-exchange", text(&n.unroutable()))]);
    ch.exchange_declare(
        n.jobs_exchange().into(),
        ExchangeKind::Direct,
        DURABLE_EXCHANGE,
        alt,
    )
    .await?;

    // Dead letters.
    ch.exchange_declare(
        n.dead().into(),
        ExchangeKind::Topic,
        DURABLE_EXCHANGE,
        none(),
    )
    .await?;
    ch.queue_declare(n.dead().into(), DURABLE_QUEUE, quorum(replicas, &[]))
        .await?;
    ch.queue_bind(
        n.dead().into(),
        n.dead().into(),
        "#".into(),
        QueueBindOptions::default(),
        none(),
    )
    .await?;

    // Results.
    ch.exchange_declare(
        n.results().into(),
        ExchangeKind::Topic,
        DURABLE_EXCHANGE,
        none(),
    )
    .await?;
    if config.results.declare_queue {
        ch.queue_declare(n.results().into(), DURABLE_QUEUE, quorum(replicas, &[]))
            .await?;
        ch.queue_bind(
            n.results().into(),
            n.results().into(),
            "#".into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    }

    // Runtime control: a stream every replica reads whole, then follows.
    ch.queue_declare(
        n.control().into(),
        DURABLE_QUEUE,
        // A stream is read from the replica on the reader's own node
        // ("does not have a running local replica" otherwise), so the
        // control stream keeps RabbitMQ's default: a replica on every node,
        // whatever `broker.replicas` says.
        args(&[("x-queue-type", text("stream"))]),
    )
    .await?;

    // Delayed retries: a headers exchange picks the delay queue by the
    // `octopods-retry-delay` header; the queue's TTL expires the message back
    // through the default exchange to the routing key it was published with,
    // which is the channel queue's name.
    ch.exchange_declare(
        n.retry_exchange().into(),
        ExchangeKind::Headers,
        DURABLE_EXCHANGE,
        none(),
    )
    .await?;
    for delay in retry_delays {
        let q = n.retry_queue(*delay);
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let mut qargs = vec![("x-message-ttl", AMQPValue::LongLongInt(ttl))];
        qargs.extend(at_least_once(""));
        let qargs = quorum(replicas, &qargs);
        ch.queue_declare(q.as_str().into(), DURABLE_QUEUE, qargs)
            .await?;
        let bind = args(&[
            ("x-match", text("all")),
            (super::headers::DELAY, text(&delay_label(*delay))),
        ]);
        ch.queue_bind(
            q.as_str().into(),
            n.retry_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            bind,
        )
        .await?;
    }

    // One quorum queue per channel.
    for c in &config.channels {
        let q = n.channel_queue(&c.name);
        let mut qargs = vec![
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(config.broker.delivery_limit)),
            ),
            (
                "x-dead-letter-routing-key",
                text(&format!("poison.{}", c.name)),
            ),
        ];
        qargs.extend(at_least_once(&n.dead()));
        let qargs = quorum(replicas, &qargs);
        ch.queue_declare(q.as_str().into(), DURABLE_QUEUE, qargs)
            .await?;
        ch.queue_bind(
            q.as_str().into(),
            n.jobs_exchange().into(),
            c.name.as_str().into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
        // Pending status checks: one active consumer too, so the replica that
        // sends for the channel also polls for it, on the same budget.
        if c.track_status {
            let q = n.status_queue(&c.name);
            let sargs = quorum(
                replicas,
                &[("x-single-active-consumer", AMQPValue::Boolean(true))],
            );
            ch.queue_declare(q.as_str().into(), DURABLE_QUEUE, sargs)
                .await?;
        }
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
