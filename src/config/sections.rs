//! The small sections: `[http]`, `[worker]`, `[results]`, `[dlq]`, `[telemetry]`.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

/// `[http]`: the metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Default `0.0.0.0:9464`.
    pub listen: SocketAddr,
    /// The histograms by channel (`true`) or one for all channels
    /// (`false`, labelled `channel="*"`). Unset: by channel while the file
    /// lists at most 200 channels and none can be added at run time.
    pub channel_histograms: Option<bool>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            channel_histograms: None,
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
    /// At most this many bytes of remembered events (the oldest go first):
    /// a producer decides an event's size. Default 8388608 (8 MiB).
    pub dedup_max_bytes: usize,
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
    /// Where the API keys of channels added at run time are read from
    /// (`octopods-worker channel add NAME --key-file F`: F is a file in
    /// this directory; the key never goes through the broker). Default:
    /// none, and `channel add` is refused.
    pub channel_keys_dir: Option<std::path::PathBuf>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
            dedup_capacity: 10_000,
            dedup_max_bytes: 8 * 1024 * 1024,
            dedup_ttl: Duration::from_secs(3600),
            replica_id: None,
            spread_window: Duration::from_secs(2),
            channel_keys_dir: None,
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

/// `[telemetry]`: distributed traces over OTLP/HTTP. Off unless an endpoint
/// is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://collector:4318`); spans go to
    /// `<base>/v1/traces`. Default: `OTEL_EXPORTER_OTLP_ENDPOINT`, else off.
    pub otlp_endpoint: Option<String>,
    /// How long one export may take before it is given up (its spans are
    /// dropped, counted). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Spans kept for export at most; beyond it new spans are dropped, so a
    /// slow or unreachable collector never grows memory. Allocated up front
    /// (~400 bytes a span). Default 4096, at most 65536.
    pub queue_size: usize,
    /// How often a batch is sent. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            export_timeout: Duration::from_secs(5),
            queue_size: 4096,
            export_interval: Duration::from_secs(1),
        }
    }
}

impl TelemetryConfig {
    /// The traces URL in force: the config's endpoint, else the
    /// environment's, with `/v1/traces` appended (as OTLP/HTTP specifies for
    /// a base endpoint). `None`: traces are off.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.base()?;
        let base = base.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }

    fn base(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
    }

    pub(crate) fn check(&self) -> Result<(), super::ConfigError> {
        // The base as given must be a URL with a host: appending the path
        // to a broken one can make a different, valid-looking URL.
        if let Some(base) = self.base() {
            let ok = reqwest::Url::parse(&base).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if ok.is_none() {
                return Err(super::invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL with a host (this key, or else OTEL_EXPORTER_OTLP_ENDPOINT)",
                ));
            }
        }
        if !(1..=65_536).contains(&self.queue_size) {
            return Err(super::invalid(
                "telemetry.queue_size",
                "must be from 1 to 65536",
            ));
        }
        for (key, d) in [
            ("telemetry.export_timeout", self.export_timeout),
            ("telemetry.export_interval", self.export_interval),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(600) {
                return Err(super::invalid(key, "must be from 10ms to 10m"));
            }
        }
        Ok(())
    }
}
