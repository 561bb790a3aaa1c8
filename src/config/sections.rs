//! The small sections: `[http]`, `[worker]`, `[results]`, `[dlq]`.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

/// `[http]`: the metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Default `0.0.0.0:9464`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

/// `[worker]`: process lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// On SIGTERM, how long jobs in flight may take to finish. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How many recently sent `job_id`s are remembered, so a redelivered job
    /// is not sent twice. Default 10000.
    pub dedup_capacity: usize,
    /// How long a sent `job_id` is remembered. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// This replica's name, for spreading channels over replicas. Default:
    /// `<HOSTNAME>-<pid>` (the pod name on Kubernetes).
    pub replica_id: Option<String>,
    /// Replicas subscribe to each channel queue after a delay within this
    /// window, derived from (replica_id, channel), so the single active
    /// consumers of the channels spread over the replicas that start together.
    /// Default `2s`; `0s` subscribes at once.
    #[serde(with = "humantime_serde")]
    pub spread_window: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
            dedup_capacity: 10_000,
            dedup_ttl: Duration::from_secs(3600),
            replica_id: None,
            spread_window: Duration::from_secs(2),
        }
    }
}

/// `[results]`: the result-event stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Declare the durable queue `<prefix>.results` bound `#`. Default true;
    /// switch off when consumers bind their own queues.
    pub declare_queue: bool,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            declare_queue: true,
        }
    }
}

/// `[dlq]`: dead-letter operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// A job replayed this many times is not replayed again. Default 5.
    pub max_replays: u32,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self { max_replays: 5 }
    }
}
