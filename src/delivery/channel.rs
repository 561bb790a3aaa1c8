//! A configured channel at run time ([`ChannelState`]: its key, limiter and
//! the operators' override in force) and what every delivery's task shares
//! ([`Shared`]). Below the stages: consume, pipeline and settle all read it.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::info;

use crate::{
    config::{ApiKey, ChannelConfig, Config},
    delivery::dedup::Dedup,
    delivery::limit::Limiter,
    observe::metrics::Metrics,
    octopods::client::Client,
    ops::control::{Command, Override},
};

/// A configured channel at run time.
pub(crate) struct ChannelState {
    pub(crate) config: ChannelConfig,
    pub(crate) key: ApiKey,
    pub(crate) limiter: Limiter,
    pub(crate) prefetch: u16,
    /// What operators' commands left in force (see [`control`](crate::ops::control)).
    pub(crate) control: tokio::sync::watch::Sender<Override>,
    /// A reply-tracking channel's secrets (its prompts' phones are keyed
    /// by the signing secret).
    pub(crate) replies: Option<crate::config::ReplySecrets>,
    /// Cancelled when the channel is removed (docs/contract.md §16): its
    /// consumers stop and hand back what they hold.
    pub(crate) removed: tokio_util::sync::CancellationToken,
}

impl ChannelState {
    pub(crate) fn new(
        config: ChannelConfig,
        key: ApiKey,
        replies: Option<crate::config::ReplySecrets>,
        broker: &crate::config::BrokerConfig,
    ) -> Self {
        Self {
            prefetch: config.effective_prefetch(broker),
            limiter: Limiter::new(config.rate_per_second, config.burst)
                .with_recipient_interval(config.recipient_interval),
            key,
            config,
            control: tokio::sync::watch::Sender::new(Override::default()),
            replies,
            removed: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Applies an operator's command to this channel: pause or resume its
    /// consumption, or put a new rate in force.
    /// A record that cannot be applied changes nothing and says why.
    pub(crate) fn apply(&self, command: &Command, metrics: &Metrics) -> Result<(), String> {
        let before = self.control.borrow().clone();
        let mut after = before.clone();
        after.apply(command)?;
        if after == before {
            return Ok(());
        }
        let name = self.config.name.as_str();
        let (new_rate, new_burst) = self.rate(&after);
        if self.rate(&before) != (new_rate, new_burst) {
            self.limiter.set_rate(new_rate, new_burst);
            metrics.rate_budget(name, new_rate);
            info!(
                channel = name,
                rate = new_rate,
                burst = new_burst,
                "new rate in force"
            );
        }
        metrics.channel_paused(name, after.paused.is_some());
        self.control.send_replace(after);
        Ok(())
    }

    /// The rate and burst in force under `o`.
    fn rate(&self, o: &Override) -> (f64, u32) {
        o.rate.map_or(
            (self.config.rate_per_second, self.config.burst),
            |(r, b)| (r, b.unwrap_or(self.config.burst)),
        )
    }

    /// This replica just became the channel's active consumer (the first
    /// delivery of a subscription): its budget starts empty. The replica it
    /// takes over from may have spent its burst a moment ago, so a handover
    /// (a failover, a restart) never lets the channel see two bursts.
    pub(crate) fn became_active(&self) {
        let (rate, burst) = self.rate(&self.control.borrow());
        self.limiter.take_over(rate, burst);
    }
}

/// What every delivery's task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The topology's names under the configured prefix.
    pub(crate) names: crate::broker::Names,
    pub(crate) client: Client,
    /// Requests to Octopods open at once (`max_concurrent_requests`).
    pub(crate) open: Semaphore,
    /// Whether results can be published (shared with the settle stage).
    pub(crate) health: Arc<crate::observe::health::Health>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) dedup: Dedup,
    /// This replica's name (see [`subscribe_delay`]).
    pub(crate) replica_id: String,
    /// A test's fault injection: called with each parsed job's id.
    pub(crate) fault: Option<fn(&str)>,
}
