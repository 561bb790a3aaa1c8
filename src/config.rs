//! Typed configuration: the TOML file, the `AMQP_URL` override, and the
//! channel API keys read from the environment or a file.
//!
//! Every field documents its default and unit. Unknown keys are errors. API keys
//! live in [`SecretString`] and never print.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub octopods: OctopodsConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub results: ResultsConfig,
    #[serde(default)]
    pub dlq: DlqConfig,
    #[serde(default)]
    pub status: StatusConfig,
    /// The WhatsApp channels this deployment sends for. At least one.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
}

/// `[broker]`: where RabbitMQ is and how the topology is named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL of a single broker. Default
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`. Set this or `urls`, not both.
    pub url: Option<String>,
    /// AMQP URLs of a cluster's nodes (CONTRACT §14). The worker connects to
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

/// `[octopods]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OctopodsConfig {
    /// Base URL of the Octopods API. Default `https://api.octopods.io`.
    pub base_url: String,
    /// Timeout of one HTTP request, connect included. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests to Octopods open at once, over all channels (each holds a
    /// connection). Jobs past it wait, still in flight. Default 256.
    pub max_concurrent_requests: usize,
    /// Allow an `http://` `base_url` on a host other than loopback. The API
    /// keys then cross the network in clear text: only for a stand-in
    /// (`sandbox`) on a private network, as in the compose stack. Default false.
    pub allow_insecure_http: bool,
}

impl Default for OctopodsConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.octopods.io".into(),
            timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            allow_insecure_http: false,
        }
    }
}

/// `[retry]`: retries of transient failures, in two levels: a few immediate
/// attempts in process (exponential backoff with jitter), then durable delayed
/// retries through the `<prefix>.retry.<delay>` queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per job in all, across both levels, the first included. Default 8.
    pub max_attempts: u32,
    /// Time from the job's first attempt after which no new attempt starts,
    /// across both levels. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Attempts per delivery before the job is handed to a delay queue.
    /// Default 2.
    pub immediate_attempts: u32,
    /// Delay before the 1st, 2nd, … durable retry; the last repeats. Default
    /// `["10s", "1m", "5m", "30m"]`. Empty: retry in process only (up to
    /// `max_attempts` within one delivery).
    #[serde(with = "durations")]
    pub delays: Vec<Duration>,
    /// First backoff interval, before jitter (±50 %). Default `500ms`; doubles
    /// each attempt.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Longest backoff interval. Default `30s`. A `Retry-After` longer than
    /// this sends the job to a delay queue instead of holding its delivery.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// How long a job waits when its fallback template is paused (Meta 132015)
    /// or the customer's marketing cap is reached (131049): a delay queue of
    /// its own. Default `3h`. Such waits count against `max_attempts` only,
    /// not `max_elapsed`.
    #[serde(with = "humantime_serde")]
    pub paused_delay: Duration,
    /// The longest `Retry-After` honoured (seconds or HTTP date); longer ones
    /// are cut to this, for the job and for the channel's pause. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(600),
            immediate_attempts: 2,
            delays: vec![
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(1800),
            ],
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
            paused_delay: Duration::from_secs(3 * 3600),
        }
    }
}

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

/// Which WhatsApp provider backs a channel; `flow` and `catalog_message`
/// exist only on the Cloud API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[default]
    CloudApi,
    Twilio,
}

/// `[[channels]]`: one WhatsApp channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Channel name: the routing key and queue suffix. `[a-z0-9_-]`, 1–64.
    pub name: String,
    /// Environment variable holding the channel's API key.
    pub api_key_env: Option<String>,
    /// File holding the channel's API key (surrounding whitespace trimmed).
    pub api_key_file: Option<PathBuf>,
    /// `cloud_api` (default) or `twilio`.
    #[serde(default)]
    pub provider: Provider,
    /// Sends per second for the whole deployment. Required, > 0; fractions allowed.
    pub rate_per_second: f64,
    /// Sends allowed at once above the steady rate. Default 1.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Optional pacing per recipient: at most one message to the same phone
    /// per this interval (Meta's error 131056). Default: off.
    #[serde(default, with = "humantime_serde")]
    pub recipient_interval: Option<Duration>,
    /// Poll each sent message's status and publish `delivered`, `read`,
    /// `failed` or `status_unknown` events (CONTRACT §12). Default false.
    #[serde(default)]
    pub track_status: bool,
}

/// `[status]`: when a sent message's status is polled (channels with
/// `track_status`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Delays after the send before each poll; the last repeats. Default
    /// `["30s", "2m", "10m", "1h", "6h"]`. Each is a delay queue.
    #[serde(with = "durations")]
    pub schedule: Vec<Duration>,
    /// After this long since the send, give up with a `status_unknown`
    /// event. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            schedule: vec![
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
                Duration::from_secs(3600),
                Duration::from_secs(6 * 3600),
            ],
            horizon: Duration::from_secs(24 * 3600),
        }
    }
}

fn default_burst() -> u32 {
    1
}

/// A channel's API key. Never printed, never logged.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ChannelConfig {
    /// Prefetch for this channel: the configured prefetch, capped so the last
    /// prefetched delivery waits at most a quarter of the consumer timeout for
    /// its turn at the rate limit (a quarter leaves room for retries).
    pub fn effective_prefetch(&self, broker: &BrokerConfig) -> u16 {
        let budget = broker.consumer_timeout.as_secs_f64() / 4.0;
        let cap = (self.rate_per_second * budget).floor() + f64::from(self.burst);
        let cap = cap.clamp(1.0, f64::from(u16::MAX)) as u16;
        broker.prefetch.min(cap).max(1)
    }

    /// Reads the API key from the environment or the file.
    pub fn api_key(&self, index: usize) -> Result<ApiKey, ConfigError> {
        let key = match (&self.api_key_env, &self.api_key_file) {
            (Some(var), None) => {
                let k = format!("channels[{index}].api_key_env");
                std::env::var(var)
                    .map_err(|_| invalid(k, format!("environment variable {var} is not set")))?
            }
            (None, Some(path)) => {
                let k = format!("channels[{index}].api_key_file");
                std::fs::read_to_string(path)
                    .map_err(|e| invalid(k, format!("cannot read {}: {e}", path.display())))?
            }
            _ => {
                return Err(invalid(
                    format!("channels[{index}]"),
                    "set exactly one of api_key_env and api_key_file",
                ));
            }
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid(
                format!("channels[{index}] ({})", self.name),
                "the API key is empty",
            ));
        }
        Ok(ApiKey::new(key))
    }
}

impl Config {
    /// Reads, parses and checks a config file, then applies `AMQP_URL`.
    /// API keys are not read here: see [`Config::api_keys`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Ok(list) = std::env::var("AMQP_URL") {
            config.broker.set_urls_from_env(&list);
        }
        config.check()?;
        Ok(config)
    }

    /// Parses and checks configuration text (no environment applied).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.broker.check_urls()?;
        if self.broker.replicas == Some(0) {
            return Err(invalid("broker.replicas", "must be at least 1 (or unset)"));
        }
        if self.broker.frame_max < 4096 {
            return Err(invalid(
                "broker.frame_max",
                "must be at least 4096 (AMQP's minimum frame size)",
            ));
        }
        if self.broker.connect_timeout.is_zero() {
            return Err(invalid("broker.connect_timeout", "must be above 0"));
        }
        check_name("broker.prefix", &self.broker.prefix, 100)?;
        if self.broker.prefetch == 0 {
            return Err(invalid("broker.prefetch", "must be at least 1"));
        }
        if self.broker.delivery_limit <= self.retry.max_attempts {
            return Err(invalid(
                "broker.delivery_limit",
                format!(
                    "must be above retry.max_attempts ({}), or RabbitMQ would poison jobs the worker still retries",
                    self.retry.max_attempts
                ),
            ));
        }
        if !self.octopods.base_url.starts_with("http://")
            && !self.octopods.base_url.starts_with("https://")
        {
            return Err(invalid(
                "octopods.base_url",
                "must start with http:// or https://",
            ));
        }
        if self.octopods.max_concurrent_requests == 0 {
            return Err(invalid(
                "octopods.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.octopods.timeout.is_zero() {
            return Err(invalid("octopods.timeout", "must be above zero"));
        }
        if let Some(host) = plain_http_host(&self.octopods.base_url)
            && !is_loopback(host)
            && !self.octopods.allow_insecure_http
        {
            return Err(invalid(
                "octopods.base_url",
                format!(
                    "http:// to {host} would send the API keys in clear text; use https:// (http:// is allowed for a loopback host, or with octopods.allow_insecure_http = true for a stand-in on a private network)"
                ),
            ));
        }
        let grace = self.worker.grace_period;
        if self.octopods.timeout > grace {
            return Err(invalid(
                "octopods.timeout",
                format!(
                    "{} is longer than worker.grace_period ({}): a request in flight at shutdown could not finish",
                    humantime::format_duration(self.octopods.timeout),
                    humantime::format_duration(grace)
                ),
            ));
        }
        if self.broker.publish_timeout.is_zero() {
            return Err(invalid("broker.publish_timeout", "must be above zero"));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.retry.immediate_attempts == 0 {
            return Err(invalid("retry.immediate_attempts", "must be at least 1"));
        }
        if self.status.schedule.is_empty()
            || self.status.schedule.iter().any(|d| d.as_millis() == 0)
        {
            return Err(invalid(
                "status.schedule",
                "at least one delay, each at least 1ms",
            ));
        }
        if self.status.horizon.is_zero() {
            return Err(invalid("status.horizon", "must be above zero"));
        }
        if self.retry.paused_delay.as_millis() == 0 {
            return Err(invalid("retry.paused_delay", "must be at least 1ms"));
        }
        if self.retry.delays.iter().any(|d| d.as_millis() == 0) {
            return Err(invalid("retry.delays", "every delay must be at least 1ms"));
        }
        // One delivery's worst case must stay well inside RabbitMQ's consumer
        // acknowledgement timeout, or the broker closes the channel mid-job.
        let per_delivery = if self.retry.delays.is_empty() {
            self.retry.max_attempts
        } else {
            self.retry.immediate_attempts.min(self.retry.max_attempts)
        };
        let worst = self
            .octopods
            .timeout
            .saturating_add(self.retry.max_interval)
            .saturating_mul(per_delivery);
        if worst >= self.broker.consumer_timeout.div_f64(2.0) {
            return Err(invalid(
                "retry",
                format!(
                    "one delivery may take {} ({per_delivery} attempts × (octopods.timeout + retry.max_interval)), \
                     over half of broker.consumer_timeout ({}); use fewer immediate attempts or durable delays",
                    humantime::format_duration(worst),
                    humantime::format_duration(self.broker.consumer_timeout)
                ),
            ));
        }
        if self.channels.is_empty() {
            return Err(invalid("channels", "configure at least one [[channels]]"));
        }
        let mut seen = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            check_name(&format!("channels[{i}].name"), &ch.name, 64)?;
            if !seen.insert(ch.name.as_str()) {
                return Err(invalid(
                    format!("channels[{i}].name"),
                    format!("channel {} is configured twice", ch.name),
                ));
            }
            if let Err(why) = crate::limit::check_budget(ch.rate_per_second, 1) {
                return Err(invalid(format!("channels[{i}].rate_per_second"), why));
            }
            if let Err(why) = crate::limit::check_budget(crate::limit::MIN_RATE, ch.burst) {
                return Err(invalid(format!("channels[{i}].burst"), why));
            }
            if ch.api_key_env.is_some() == ch.api_key_file.is_some() {
                return Err(invalid(
                    format!("channels[{i}]"),
                    "set exactly one of api_key_env and api_key_file",
                ));
            }
        }
        Ok(())
    }

    /// Reads every channel's API key, in channel order.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>, ConfigError> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, ch)| ch.api_key(i))
            .collect()
    }

    /// This replica's name: `worker.replica_id`, else `<HOSTNAME>-<pid>`
    /// (processes on one host differ by pid; pods by name).
    pub fn replica_id(&self) -> String {
        self.worker.replica_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "local".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// `broker.publish_timeout`, at most half the grace period.
    pub fn publish_timeout(&self) -> Duration {
        self.broker
            .publish_timeout
            .min(self.worker.grace_period.div_f64(2.0))
            .max(Duration::from_millis(1))
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// The host of an `http://` URL (not `https://`), else `None`.
fn plain_http_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    Some(match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `["10s", "1m"]` as durations.
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
            })
            .collect()
    }
}

fn check_name(key: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if value.is_empty() || value.len() > max || !ok_chars {
        return Err(invalid(
            key,
            format!("{value:?} must be 1-{max} characters of a-z, 0-9, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// `amqp://user:***@host/…`: a broker URL fit for logs and errors (the
/// password never leaves the config).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_is_redacted() {
        assert_eq!(
            super::redact_url("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact_url("amqp://host/"), "amqp://host/");
    }

    use super::*;

    const MINIMAL: &str = r#"
[[channels]]
name = "store-eu"
api_key_env = "SOME_VAR"
rate_per_second = 20
burst = 5
"#;

    #[test]
    fn broker_nodes_from_url_urls_or_the_environment() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.broker.nodes(), vec![DEFAULT_BROKER_URL]);
        let c = Config::from_toml(&format!(
            "[broker]\nurls = [\"amqp://a:5681/%2f\", \"amqps://b/%2f\"]\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.broker.nodes(), vec!["amqp://a:5681/%2f", "amqps://b/%2f"]);
        let mut b = c.broker.clone();
        b.set_urls_from_env(" amqp://x:1/ , ,amqp://y:2/ ");
        assert_eq!(b.nodes(), vec!["amqp://x:1/", "amqp://y:2/"]);
        b.set_urls_from_env(" , ");
        assert_eq!(
            b.nodes(),
            vec!["amqp://x:1/", "amqp://y:2/"],
            "blank changes nothing"
        );

        let both = Config::from_toml(&format!(
            "[broker]\nurl = \"amqp://a/\"\nurls = [\"amqp://b/\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let bad = Config::from_toml(&format!(
            "[broker]\nurls = [\"amqp://a/\", \"http://u:secret@b/\"]\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(bad.starts_with("broker.urls: http://u:***@b/"), "{bad}");
        assert!(!bad.contains("secret"), "{bad}");
        let zero = Config::from_toml(&format!("[broker]\nreplicas = 0\n{MINIMAL}")).unwrap_err();
        assert!(zero.to_string().starts_with("broker.replicas"), "{zero}");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.broker.prefix, "octopods");
        assert_eq!(c.broker.prefetch, 64);
        assert_eq!(c.octopods.timeout, Duration::from_secs(10));
        assert_eq!(c.retry.max_attempts, 8);
        assert_eq!(c.retry.max_elapsed, Duration::from_secs(600));
        assert_eq!(c.http.listen.port(), 9464);
        assert_eq!(c.channels[0].provider, Provider::CloudApi);
    }

    #[test]
    fn plain_http_to_a_remote_host_is_refused() {
        for url in [
            "http://api.octopods.io",
            "http://10.0.0.1:8080/x",
            "http://user@evil.example",
        ] {
            let err = Config::from_toml(&format!("[octopods]\nbase_url = \"{url}\"\n{MINIMAL}"))
                .unwrap_err();
            assert!(
                err.to_string().starts_with("octopods.base_url: http:// to"),
                "{url}: {err}"
            );
        }
        for url in [
            "http://127.0.0.1:9000",
            "http://localhost",
            "http://[::1]:80",
            "https://api.octopods.io",
        ] {
            Config::from_toml(&format!("[octopods]\nbase_url = \"{url}\"\n{MINIMAL}")).unwrap();
        }
    }

    #[test]
    fn an_octopods_timeout_past_the_grace_period_is_refused() {
        let err = Config::from_toml(&format!(
            "[octopods]\ntimeout = \"40s\"\n[worker]\ngrace_period = \"30s\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("octopods.timeout: 40s is longer than worker.grace_period"),
            "{err}"
        );
    }

    #[test]
    fn huge_durations_do_not_overflow_the_checks() {
        let err = Config::from_toml(&format!(
            "[octopods]\ntimeout = \"500000000years\"\n[worker]\ngrace_period = \"600000000years\"\n[broker]\npublish_timeout=\"1s\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(err.to_string().starts_with("retry:"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml(&format!("{MINIMAL}\n[retry]\nmax_atempts = 3\n")).unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");
    }

    #[test]
    fn both_key_sources_is_an_error_naming_the_channel() {
        let text = MINIMAL.replace(
            "api_key_env = \"SOME_VAR\"",
            "api_key_env = \"A\"\napi_key_file = \"/x\"",
        );
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "channels[0]: set exactly one of api_key_env and api_key_file"
        );
    }

    #[test]
    fn zero_rate_is_rejected() {
        let err = Config::from_toml(&MINIMAL.replace("= 20", "= 0")).unwrap_err();
        assert!(err.to_string().starts_with("channels[0].rate_per_second"));
    }

    #[test]
    fn duplicate_channel_is_rejected() {
        let text = format!("{MINIMAL}{MINIMAL}");
        let err = Config::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("configured twice"), "{err}");
    }

    #[test]
    fn bad_duration_is_a_parse_error() {
        let err =
            Config::from_toml(&format!("[octopods]\ntimeout = \"ten\"\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn missing_env_key_names_variable_not_value() {
        let c =
            Config::from_toml(&MINIMAL.replace("SOME_VAR", "OCTOPODS_TEST_SURELY_UNSET")).unwrap();
        let err = c.api_keys().unwrap_err();
        assert_eq!(
            err.to_string(),
            "channels[0].api_key_env: environment variable OCTOPODS_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn key_file_is_trimmed_and_never_debug_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret-key\n").unwrap();
        let text = MINIMAL.replace(
            "api_key_env = \"SOME_VAR\"",
            &format!("api_key_file = {:?}", path.display().to_string()),
        );
        let c = Config::from_toml(&text).unwrap();
        let keys = c.api_keys().unwrap();
        assert_eq!(keys[0].expose(), "s3cret-key");
        assert!(!format!("{:?}", keys[0]).contains("s3cret"));
    }

    #[test]
    fn slow_channel_prefetch_is_capped_by_consumer_timeout() {
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.channels[0].rate_per_second = 0.01;
        c.channels[0].burst = 1;
        // 0.01/s × 450 s = 4.5 → 4, plus the burst of 1.
        assert_eq!(c.channels[0].effective_prefetch(&c.broker), 5);
        c.channels[0].rate_per_second = 100.0;
        assert_eq!(c.channels[0].effective_prefetch(&c.broker), 64);
    }

    #[test]
    fn retry_delays_parse_and_default() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.retry.delays.len(), 4);
        assert_eq!(c.retry.immediate_attempts, 2);
        let c = Config::from_toml(&format!("[retry]\ndelays = [\"500ms\", \"2m\"]\n{MINIMAL}"))
            .unwrap();
        assert_eq!(
            c.retry.delays,
            vec![Duration::from_millis(500), Duration::from_secs(120)]
        );
        let err =
            Config::from_toml(&format!("[retry]\ndelays = [\"soon\"]\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn in_process_retries_must_fit_the_consumer_timeout() {
        let text = format!(
            "[retry]\ndelays = []\nmax_attempts = 60\n[broker]\ndelivery_limit = 99\n{MINIMAL}"
        );
        let err = Config::from_toml(&text).unwrap_err();
        assert!(
            err.to_string().starts_with("retry: one delivery may take"),
            "{err}"
        );
    }

    #[test]
    fn delivery_limit_must_exceed_attempts() {
        let err =
            Config::from_toml(&format!("[broker]\ndelivery_limit = 8\n{MINIMAL}")).unwrap_err();
        assert!(
            err.to_string().starts_with("broker.delivery_limit"),
            "{err}"
        );
    }
}
