//! Typed configuration: the TOML file, the `AMQP_URL` override, and the
//! channel API keys read from the environment or a file.
//!
//! Every field documents its default and unit. Unknown keys are errors. API keys
//! live in a secret type and never print. One file per section, each with
//! its own `check()`:
//! [`broker`], [`octopods`], [`retry`] (and status), [`channel`], [`console`], [`sections`] (the small ones).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

mod broker;
mod channel;
mod console;
mod octopods;
mod replies;
mod retry;
mod sections;

pub use broker::{BrokerConfig, DEFAULT_BROKER_URL};
pub use channel::{ApiKey, ChannelConfig, Provider};
pub(crate) use channel::{MAX_BURST, MAX_RATE, MIN_RATE, check_budget};
pub use console::{ConsoleConfig, ConsoleUser, Role};
pub use octopods::OctopodsConfig;
pub use replies::{ChannelReplies, MAX_WINDOW, Platform, RepliesConfig, ReplySecrets, Secret};
pub use retry::{RetryConfig, StatusConfig};
pub use sections::{DlqConfig, HttpConfig, ResultsConfig, TelemetryConfig, WorkerConfig};

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
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub replies: RepliesConfig,
    /// The WhatsApp channels this deployment sends for: at least one, or
    /// none with `worker.channel_keys_dir` (all added at run time).
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
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

    /// Each section checks its own keys; the checks that span sections
    /// get what they need passed in.
    fn check(&self) -> Result<(), ConfigError> {
        self.broker.check(&self.retry)?;
        self.octopods.check(self.worker.grace_period)?;
        self.retry
            .check(self.octopods.timeout, self.broker.consumer_timeout)?;
        self.status.check()?;
        self.telemetry.check()?;
        self.console.check()?;
        self.replies.check()?;
        if self.channels.is_empty() && self.worker.channel_keys_dir.is_none() {
            return Err(invalid(
                "channels",
                "configure at least one [[channels]] (or worker.channel_keys_dir, to add them at run time)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            ch.check(i)?;
            if !seen.insert(ch.name.as_str()) {
                return Err(invalid(
                    format!("channels[{i}].name"),
                    format!("channel {} is configured twice", ch.name),
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

    /// Reads the signing secret and API token of every reply-tracking
    /// channel, in channel order (`None` for the others).
    pub fn reply_secrets(&self) -> Result<Vec<Option<ReplySecrets>>, ConfigError> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                ch.replies
                    .as_ref()
                    .map(|r| r.secrets(&format!("channels[{i}].replies")))
                    .transpose()
            })
            .collect()
    }

    /// Whether any channel's answers come back (then the receiver listens
    /// and the replies topology is declared).
    pub fn tracks_replies(&self) -> bool {
        self.channels.iter().any(|c| c.replies.is_some())
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

    /// Whether the histograms are kept by channel (`http.channel_histograms`):
    /// unset, while the file lists at most 200 channels and no more can be
    /// added at run time. A platform's thousands of channels would make each
    /// histogram thousands of times 15 series, in the worker and in Prometheus.
    pub fn channel_histograms(&self) -> bool {
        self.http.channel_histograms.unwrap_or(
            self.channels.len() <= crate::observe::metrics::EVERY_SERIES_UP_TO
                && self.worker.channel_keys_dir.is_none(),
        )
    }

    /// `broker.publish_timeout`, at most half the grace period.
    pub fn publish_timeout(&self) -> Duration {
        self.broker
            .publish_timeout
            .min(self.worker.grace_period.div_f64(2.0))
            .max(Duration::from_millis(1))
    }

    /// `broker.publish_timeout` whole, for operator commands (`dlq`,
    /// `channel`, `enqueue`): they drain no replica, so no grace period
    /// bounds them, and a slow confirm is better waited for than reported
    /// as a failure.
    pub fn command_publish_timeout(&self) -> Duration {
        self.broker.publish_timeout.max(Duration::from_millis(1))
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// A channel's name as the file requires it (`[a-z0-9._-]`, 1–64), for
/// names that come from elsewhere (a command, a control record).
pub(crate) fn check_channel_name(value: &str) -> Result<(), String> {
    check_name("channel", value, 64).map_err(|e| e.to_string())
}

/// A key file's name inside `worker.channel_keys_dir`: a plain file name
/// (`[A-Za-z0-9._-]`, 1–255, not starting with a dot), so a control record
/// can never name a file outside the directory.
pub(crate) fn check_key_file_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key file {:?}: a file name in worker.channel_keys_dir (1-255 characters of A-Z, a-z, 0-9, '-', '_', '.', not starting with '.')",
            crate::observe::logging::escape(&value.chars().take(80).collect::<String>())
        ))
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
mod tests;
