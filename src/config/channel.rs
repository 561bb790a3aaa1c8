//! `[[channels]]`: one WhatsApp channel each — its name, rate budget, and
//! where its API key is read from.

use std::{fmt, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{BrokerConfig, ConfigError, check_name, invalid};

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
    /// `failed` or `status_unknown` events (docs/contract.md §12). Default false.
    #[serde(default)]
    pub track_status: bool,
    /// Bring the customers' answers back as `replied` events
    /// (docs/contract.md §15). Default: off.
    #[serde(default)]
    pub replies: Option<super::ChannelReplies>,
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
        let key = super::replies::read_secret(
            &format!("channels[{index}].api_key"),
            self.api_key_env.as_deref(),
            self.api_key_file.as_deref(),
        )?;
        Ok(ApiKey::new(key.expose()))
    }
}

impl ChannelConfig {
    /// A channel added at run time (docs/contract.md §16): its key read
    /// from `key_path`, everything else the defaults.
    pub(crate) fn added(name: &str, rate: f64, burst: Option<u32>, key_path: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            api_key_env: None,
            api_key_file: Some(key_path),
            provider: Provider::default(),
            rate_per_second: rate,
            burst: burst.unwrap_or_else(default_burst),
            recipient_interval: None,
            track_status: false,
            replies: None,
        }
    }

    /// `i`: the channel's place in the file, for the key in messages.
    pub(super) fn check(&self, i: usize) -> Result<(), ConfigError> {
        check_name(&format!("channels[{i}].name"), &self.name, 64)?;
        if let Err(why) = crate::config::check_budget(self.rate_per_second, 1) {
            return Err(invalid(format!("channels[{i}].rate_per_second"), why));
        }
        if let Err(why) = crate::config::check_budget(crate::config::MIN_RATE, self.burst) {
            return Err(invalid(format!("channels[{i}].burst"), why));
        }
        // Governor keeps a recipient's interval in u64 nanoseconds (584 years).
        if self
            .recipient_interval
            .is_some_and(|i| i > Duration::from_secs(24 * 3600))
        {
            return Err(invalid(
                format!("channels[{i}].recipient_interval"),
                "at most 1 day",
            ));
        }
        if self.api_key_env.is_some() == self.api_key_file.is_some() {
            return Err(invalid(
                format!("channels[{i}]"),
                "set exactly one of api_key_env and api_key_file",
            ));
        }
        if let Some(r) = &self.replies {
            r.check(&format!("channels[{i}].replies"))?;
        }
        Ok(())
    }
}

/// The slowest rate a channel may have: one send per 1,000 s.
pub(crate) const MIN_RATE: f64 = 0.001;
/// The fastest rate a channel may have, in sends per second.
pub(crate) const MAX_RATE: f64 = 1_000_000.0;
/// The largest burst a channel may have.
pub(crate) const MAX_BURST: u32 = 100_000;

/// Checks a rate and burst against the bounds every source (config, the
/// `channel` command, a control record) must keep. Within them governor's
/// arithmetic cannot overflow: its burst window is the period times the
/// burst, at most 1,000 s × 100,000 = 10^17 ns, well under `u64::MAX` ns.
pub(crate) fn check_budget(rate_per_second: f64, burst: u32) -> Result<(), String> {
    if !(rate_per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate_per_second)) {
        return Err(format!(
            "rate {rate_per_second}: must be from {MIN_RATE} to {MAX_RATE} per second"
        ));
    }
    if !(1..=MAX_BURST).contains(&burst) {
        return Err(format!("burst {burst}: must be from 1 to {MAX_BURST}"));
    }
    Ok(())
}
