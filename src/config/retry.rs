//! `[retry]` and `[status]`: the retry schedule and the delivery-status
//! polling schedule.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

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

impl RetryConfig {
    /// `octopods_timeout` and `consumer_timeout`: one delivery's worst case
    /// must stay well inside RabbitMQ's consumer acknowledgement timeout, or
    /// the broker closes the channel mid-job.
    pub(super) fn check(
        &self,
        octopods_timeout: Duration,
        consumer_timeout: Duration,
    ) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.immediate_attempts == 0 {
            return Err(invalid("retry.immediate_attempts", "must be at least 1"));
        }
        if self.paused_delay.as_millis() == 0 {
            return Err(invalid("retry.paused_delay", "must be at least 1ms"));
        }
        if self.delays.iter().any(|d| d.as_millis() == 0) {
            return Err(invalid("retry.delays", "every delay must be at least 1ms"));
        }
        let per_delivery = if self.delays.is_empty() {
            self.max_attempts
        } else {
            self.immediate_attempts.min(self.max_attempts)
        };
        let worst = octopods_timeout
            .saturating_add(self.max_interval)
            .saturating_mul(per_delivery);
        if worst >= consumer_timeout.div_f64(2.0) {
            return Err(invalid(
                "retry",
                format!(
                    "one delivery may take {} ({per_delivery} attempts × (octopods.timeout + retry.max_interval)), \
                     over half of broker.consumer_timeout ({}); use fewer immediate attempts or durable delays",
                    humantime::format_duration(worst),
                    humantime::format_duration(consumer_timeout)
                ),
            ));
        }
        Ok(())
    }
}

impl StatusConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.schedule.is_empty() || self.schedule.iter().any(|d| d.as_millis() == 0) {
            return Err(invalid(
                "status.schedule",
                "at least one delay, each at least 1ms",
            ));
        }
        if self.horizon.is_zero() {
            return Err(invalid("status.horizon", "must be above zero"));
        }
        Ok(())
    }
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
