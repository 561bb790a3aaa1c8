//! `[broker]`: where RabbitMQ is, how the topology is named, and the
//! consumer's limits.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, RetryConfig, check_name, invalid, redact_url};

/// `[broker]`: where RabbitMQ is and how the topology is named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL of a single broker. Default
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`. Set this or `urls`, not both.
    pub url: Option<String>,
    /// AMQP URLs of a cluster's nodes (docs/contract.md §14). The worker connects to
    /// the first that answers and, when a connection is lost, tries the
    /// others in turn, starting after the one it lost. The `AMQP_URL`
    /// environment variable (one URL or a comma-separated list) overrides
    /// `url` and `urls`.
    pub urls: Vec<String>,
    /// How long connecting to one node may take before the next is tried.
    /// Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Replicas of each quorum queue when it is first declared
    /// (`x-quorum-initial-group-size`). Default: unset, which lets RabbitMQ
    /// place one on every node of the cluster. The control stream always has
    /// one on every node: each replica reads it from its own node. RabbitMQ
    /// compares this argument on every declare, so it cannot be changed for
    /// queues that exist: grow or shrink them with `rabbitmq-queues
    /// add_member` / `delete_member` instead.
    pub replicas: Option<u16>,
    /// Largest AMQP frame the worker proposes (bytes). Default 131072,
    /// RabbitMQ's own default: a message's headers must fit in one frame, so
    /// a worker with a smaller frame_max than its producers could not receive
    /// a job whose headers are larger (a 100 KB header stalled the hostile-
    /// headers test at 32 KiB). Lower it only where producers are held to the
    /// same: the AMQP client keeps 32 frames of buffer each way per
    /// connection (16 MiB resident for two connections at the default, 4 MiB
    /// at 32768). A URL's `?frame_max=` wins.
    pub frame_max: u32,
    /// Prefix of every exchange and queue name. Default `octopods`.
    pub prefix: String,
    /// Unacknowledged deliveries per channel queue. Default 64. Capped per channel
    /// so a delivery never waits for its rate limit longer than a fraction of
    /// `consumer_timeout` (see [`ChannelConfig::effective_prefetch`]).
    pub prefetch: u16,
    /// RabbitMQ's consumer acknowledgement timeout (its `consumer_timeout`
    /// setting). Default `30m`. Used to cap prefetch and the retry budget.
    #[serde(with = "humantime_serde")]
    pub consumer_timeout: Duration,
    /// `x-delivery-limit` of the channel queues: deliveries after which RabbitMQ
    /// dead-letters a job as `poison`. Default 20.
    pub delivery_limit: u32,
    /// How long a publish (event, dead letter, retry copy) may wait for the
    /// broker's confirm before the job goes back to its queue. Default `15s`;
    /// at most half of `worker.grace_period` is used, so a stop is never held
    /// by a broker that does not answer.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: None,
            urls: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            replicas: None,
            frame_max: 128 * 1024,
            prefix: "octopods".into(),
            prefetch: 64,
            consumer_timeout: Duration::from_secs(30 * 60),
            delivery_limit: 20,
            publish_timeout: Duration::from_secs(15),
        }
    }
}

/// The broker URL used when neither `url` nor `urls` is set.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// At most this many broker URLs: a cluster, not a scan.
const MAX_BROKER_URLS: usize = 16;

impl BrokerConfig {
    /// The nodes to connect to, in order of preference.
    pub fn nodes(&self) -> Vec<&str> {
        if !self.urls.is_empty() {
            self.urls.iter().map(String::as_str).collect()
        } else {
            vec![self.url.as_deref().unwrap_or(DEFAULT_BROKER_URL)]
        }
    }

    /// `AMQP_URL`: one URL or a comma-separated list replaces `url` and
    /// `urls`. Blank entries are ignored; an all-blank value changes nothing.
    pub fn set_urls_from_env(&mut self, list: &str) {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if !urls.is_empty() {
            self.url = None;
            self.urls = urls;
        }
    }

    fn check_urls(&self) -> Result<(), ConfigError> {
        if self.url.is_some() && !self.urls.is_empty() {
            return Err(invalid(
                "broker.urls",
                "set broker.url (one node) or broker.urls (a cluster), not both",
            ));
        }
        if self.urls.len() > MAX_BROKER_URLS {
            return Err(invalid(
                "broker.urls",
                format!("at most {MAX_BROKER_URLS} nodes"),
            ));
        }
        let field = if self.urls.is_empty() {
            "broker.url"
        } else {
            "broker.urls"
        };
        for url in self.nodes() {
            if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
                return Err(invalid(
                    field,
                    format!("{}: must start with amqp:// or amqps://", redact_url(url)),
                ));
            }
            if url.chars().any(char::is_control) {
                return Err(invalid(field, "must not contain control characters"));
            }
        }
        Ok(())
    }
}

impl BrokerConfig {
    pub(super) fn check(&self, retry: &RetryConfig) -> Result<(), ConfigError> {
        self.check_urls()?;
        if self.replicas == Some(0) {
            return Err(invalid("broker.replicas", "must be at least 1 (or unset)"));
        }
        if self.frame_max < 4096 {
            return Err(invalid(
                "broker.frame_max",
                "must be at least 4096 (AMQP's minimum frame size)",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("broker.connect_timeout", "must be above 0"));
        }
        check_name("broker.prefix", &self.prefix, 100)?;
        if self.prefetch == 0 {
            return Err(invalid("broker.prefetch", "must be at least 1"));
        }
        if self.delivery_limit <= retry.max_attempts {
            return Err(invalid(
                "broker.delivery_limit",
                format!(
                    "must be above retry.max_attempts ({}), or RabbitMQ would poison jobs the worker still retries",
                    retry.max_attempts
                ),
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err(invalid("broker.publish_timeout", "must be above zero"));
        }
        Ok(())
    }
}
