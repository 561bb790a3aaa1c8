//! The Prometheus registry and one method per thing that happens (docs/contract.md §9).
//! Label values come from closed enums or configured channel names; never a
//! phone number or a key.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

use crate::outcome::{EventKind, Reason, RetryCause};

/// The `status` labels exported at zero from the start (others appear when seen).
const KNOWN_STATUSES: [&str; 10] = [
    "200", "400", "401", "403", "429", "500", "502", "503", "504", "error",
];
/// The `kind` labels of `octopods_settle_failures_total`.
const SETTLE_FAILURES: [&str; 4] = ["broker", "nacked", "unroutable", "timeout"];

pub struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    completed: IntCounterVec,
    dead_lettered: IntCounterVec,
    retries: IntCounterVec,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    job_duration: HistogramVec,
    limit_wait: HistogramVec,
    in_flight: IntGaugeVec,
    broker_connected: IntGauge,
    broker_reconnects: IntCounter,
    events_unroutable: IntCounterVec,
    delayed: IntCounterVec,
    budget: prometheus::GaugeVec,
    duplicates_suppressed: IntCounterVec,
    panics: IntCounterVec,
    sent_via: IntCounterVec,
    status_events: IntCounterVec,
    polls: IntCounterVec,
    settle_failures: IntCounterVec,
    forged: IntCounterVec,
    trace_invalid: IntCounterVec,
    settle_failing: IntGauge,
    broker_blocked: IntGauge,
    paused: IntGaugeVec,
    node: IntGaugeVec,
    queue_wait: HistogramVec,
    control_rejected: IntCounterVec,
    session_panics: IntCounterVec,
    replies: IntCounterVec,
    reply_webhook: HistogramVec,
    reply_match_delay: HistogramVec,
    reply_lookups: IntCounterVec,
    /// Whether the per-channel histograms carry the channel's name, or
    /// [`ALL_CHANNELS`] for every channel (`http.channel_histograms`).
    histograms_by_channel: bool,
}

/// The `channel` label of the histograms when they are not kept by
/// channel: not a channel name (those never hold `*`).
pub(crate) const ALL_CHANNELS: &str = "*";

/// The `outcome` labels of `octopods_replies_total`.
pub(crate) const REPLY_OUTCOMES: [&str; 6] = [
    "matched",
    "ambiguous",
    "unmatched",
    "no_prompt",
    "expired",
    "bad_signature",
];

mod define;

/// Up to this many channels every per-channel series exists at zero.
pub(crate) const EVERY_SERIES_UP_TO: usize = 200;

impl Metrics {
    /// The histograms by channel (`true`, as [`Metrics::new`]) or one for
    /// all channels, labelled [`ALL_CHANNELS`]: by channel, the four cost
    /// ~2.7 KiB per channel that has sent, and 15 series each in Prometheus.
    #[must_use]
    pub fn histograms_by_channel(mut self, by_channel: bool) -> Self {
        self.histograms_by_channel = by_channel;
        self
    }

    /// The `channel` label a histogram observation of `channel` goes to.
    fn histogram_channel<'a>(&self, channel: &'a str) -> &'a str {
        if self.histograms_by_channel {
            channel
        } else {
            ALL_CHANNELS
        }
    }

    /// Makes every per-channel series whose labels are known (the channel ×
    /// the closed enums, the delay queues) exist at zero, so alerts,
    /// dashboards and `rate()` work before the first event. With more than
    /// [`EVERY_SERIES_UP_TO`] channels only the core ones do (budget,
    /// paused, in flight, received, completed): the ~90 series of a channel
    /// cost ~32 KiB of memory each channel and as much in Prometheus; the
    /// others appear at their first event (docs/observability.md).
    /// A channel removed at run time: its gauges go (its counters stay, as
    /// counters do).
    pub fn forget_channel(&self, channel: &str) {
        drop(self.budget.remove_label_values(&[channel]));
        drop(self.in_flight.remove_label_values(&[channel]));
        drop(self.paused.remove_label_values(&[channel]));
    }

    pub fn register_channel(
        &self,
        channel: &str,
        rate_per_second: f64,
        delays: &[String],
        channels: usize,
    ) {
        self.budget
            .with_label_values(&[channel])
            .set(rate_per_second);
        self.in_flight.with_label_values(&[channel]);
        self.paused.with_label_values(&[channel]);
        self.received.with_label_values(&[channel]);
        for k in EventKind::OUTCOMES {
            self.completed.with_label_values(&[channel, k.as_str()]);
        }
        if channels > EVERY_SERIES_UP_TO {
            return;
        }
        for c in [
            &self.received,
            &self.duplicates_suppressed,
            &self.panics,
            &self.forged,
            &self.trace_invalid,
        ] {
            c.with_label_values(&[channel]);
        }
        self.in_flight.with_label_values(&[channel]);
        self.paused.with_label_values(&[channel]);
        let h = self.histogram_channel(channel);
        self.queue_wait.with_label_values(&[h]);
        self.api_duration.with_label_values(&[h]);
        self.limit_wait.with_label_values(&[h]);
        for k in EventKind::OUTCOMES {
            self.completed.with_label_values(&[channel, k.as_str()]);
            self.job_duration.with_label_values(&[h, k.as_str()]);
        }
        for k in EventKind::ALL {
            self.events_unroutable
                .with_label_values(&[channel, k.as_str()]);
        }
        for k in EventKind::STATUSES {
            self.status_events.with_label_values(&[channel, k.as_str()]);
        }
        for v in crate::outcome::Via::ALL {
            self.sent_via.with_label_values(&[channel, v.as_str()]);
        }
        for r in Reason::ALL {
            self.dead_lettered.with_label_values(&[channel, r.as_str()]);
        }
        for c in RetryCause::ALL {
            self.retries.with_label_values(&[channel, c.as_str()]);
        }
        for s in KNOWN_STATUSES {
            self.api_requests.with_label_values(&[channel, s]);
        }
        for k in SETTLE_FAILURES {
            self.settle_failures.with_label_values(&[channel, k]);
        }
        for d in delays {
            self.delayed.with_label_values(&[channel, d]);
        }
    }

    /// A reply-tracking channel's series, at zero.
    pub fn register_replies(&self, channel: &str) {
        for outcome in REPLY_OUTCOMES {
            self.replies.with_label_values(&[channel, outcome]);
        }
    }

    /// A customer message came to `outcome` (one of [`REPLY_OUTCOMES`]).
    pub fn reply(&self, channel: &str, outcome: &'static str) {
        self.replies.with_label_values(&[channel, outcome]).inc();
    }

    pub fn reply_webhook(&self, platform: &str, status: u16, took: Duration) {
        self.reply_webhook
            .with_label_values(&[platform, &status.to_string()])
            .observe(took.as_secs_f64());
    }

    pub fn reply_matched_after(&self, platform: &str, after: Duration) {
        self.reply_match_delay
            .with_label_values(&[platform])
            .observe(after.as_secs_f64());
    }

    pub fn reply_lookup(&self, platform: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.reply_lookups
            .with_label_values(&[platform, &status])
            .inc();
    }

    pub fn channel_paused(&self, channel: &str, paused: bool) {
        self.paused
            .with_label_values(&[channel])
            .set(i64::from(paused));
    }

    /// The rate in force for the channel (configured, or an operator's).
    pub fn rate_budget(&self, channel: &str, rate_per_second: f64) {
        self.budget
            .with_label_values(&[channel])
            .set(rate_per_second);
    }

    pub fn status_event(&self, channel: &str, kind: EventKind) {
        self.status_events
            .with_label_values(&[channel, kind.as_str()])
            .inc();
    }

    pub fn status_polled(&self, channel: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.polls.with_label_values(&[channel, &status]).inc();
    }

    pub fn sent_via(&self, channel: &str, via: crate::outcome::Via) {
        self.sent_via
            .with_label_values(&[channel, via.as_str()])
            .inc();
    }

    pub fn control_rejected(&self, reason: &'static str) {
        self.control_rejected.with_label_values(&[reason]).inc();
    }

    pub fn session_panicked(&self) {
        self.session_panics.with_label_values::<&str>(&[]).inc();
    }

    pub fn panicked(&self, channel: &str) {
        self.panics.with_label_values(&[channel]).inc();
    }

    pub fn settle_failed(&self, channel: &str, kind: &str) {
        self.settle_failures
            .with_label_values(&[channel, kind])
            .inc();
    }

    pub fn settle_failing(&self, failing: bool) {
        self.settle_failing.set(i64::from(failing));
    }

    pub fn broker_blocked(&self, blocked: bool) {
        self.broker_blocked.set(i64::from(blocked));
    }

    pub fn trace_context_invalid(&self, channel: &str) {
        self.trace_invalid.with_label_values(&[channel]).inc();
    }

    pub fn forged_history(&self, channel: &str) {
        self.forged.with_label_values(&[channel]).inc();
    }

    pub fn queue_wait(&self, channel: &str, waited: Duration) {
        self.queue_wait
            .with_label_values(&[self.histogram_channel(channel)])
            .observe(waited.as_secs_f64());
    }

    pub fn received(&self, channel: &str) {
        self.received.with_label_values(&[channel]).inc();
        self.in_flight.with_label_values(&[channel]).inc();
    }

    /// A job left the worker's hands without settling (shutdown, broker loss).
    pub fn unsettled(&self, channel: &str) {
        self.in_flight.with_label_values(&[channel]).dec();
    }

    pub fn completed(&self, channel: &str, completion: EventKind, took: Duration) {
        self.completed
            .with_label_values(&[channel, completion.as_str()])
            .inc();
        self.job_duration
            .with_label_values(&[self.histogram_channel(channel), completion.as_str()])
            .observe(took.as_secs_f64());
        self.in_flight.with_label_values(&[channel]).dec();
    }

    pub fn dead_lettered(&self, channel: &str, reason: Reason) {
        self.dead_lettered
            .with_label_values(&[channel, reason.as_str()])
            .inc();
    }

    pub fn retried(&self, channel: &str, cause: RetryCause) {
        self.retries
            .with_label_values(&[channel, cause.as_str()])
            .inc();
    }

    pub fn api_request(&self, channel: &str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.api_requests
            .with_label_values(&[channel, &status])
            .inc();
        self.api_duration
            .with_label_values(&[self.histogram_channel(channel)])
            .observe(took.as_secs_f64());
    }

    pub fn waited_for_limit(&self, channel: &str, waited: Duration) {
        self.limit_wait
            .with_label_values(&[self.histogram_channel(channel)])
            .observe(waited.as_secs_f64());
    }

    pub fn broker_connected(&self, up: bool) {
        self.broker_connected.set(i64::from(up));
    }

    /// The configured nodes, all at 0 until one is connected.
    pub fn broker_nodes(&self, nodes: &[String]) {
        for n in nodes {
            self.node.with_label_values(&[n]);
        }
    }

    /// Connected to `node` (or, `None`, to none).
    pub fn broker_node(&self, node: Option<&str>) {
        use prometheus::core::Collector;
        for m in self.node.collect().iter().flat_map(|f| f.get_metric()) {
            if let Some(label) = m.get_label().first() {
                let up = Some(label.value()) == node;
                self.node
                    .with_label_values(&[label.value()])
                    .set(i64::from(up));
            }
        }
        if let Some(n) = node {
            self.node.with_label_values(&[n]).set(1);
        }
    }

    pub fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }

    pub fn event_unroutable(&self, channel: &str, event: EventKind) {
        self.events_unroutable
            .with_label_values(&[channel, event.as_str()])
            .inc();
    }

    /// The job left for a delay queue; it is no longer in flight here.
    pub fn delayed(&self, channel: &str, delay: &str) {
        self.delayed.with_label_values(&[channel, delay]).inc();
        self.in_flight.with_label_values(&[channel]).dec();
    }

    pub fn duplicate_suppressed(&self, channel: &str) {
        self.duplicates_suppressed
            .with_label_values(&[channel])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_metric_names_are_exposed() {
        let m = Metrics::new();
        m.register_channel("c", 2.5, &["10s".into()], 1);
        m.received("c");
        m.dead_lettered("c", Reason::Window);
        m.retried("c", RetryCause::ServerError);
        m.api_request("c", Some(200), Duration::from_millis(5));
        m.api_request("c", None, Duration::from_millis(5));
        m.waited_for_limit("c", Duration::ZERO);
        m.completed("c", EventKind::Sent, Duration::from_millis(9));
        let text = m.render();
        for name in [
            "octopods_jobs_received_total{channel=\"c\"} 1",
            "octopods_jobs_completed_total{channel=\"c\",outcome=\"sent\"} 1",
            "octopods_jobs_completed_total{channel=\"c\",outcome=\"dead_lettered\"} 0",
            "octopods_dead_lettered_total{channel=\"c\",reason=\"window\"} 1",
            "octopods_retries_total{cause=\"server_error\",channel=\"c\"} 1",
            "octopods_api_requests_total{channel=\"c\",status=\"200\"} 1",
            "octopods_api_requests_total{channel=\"c\",status=\"error\"} 1",
            "octopods_api_request_duration_seconds_bucket",
            "octopods_job_duration_seconds_bucket",
            "octopods_rate_limit_wait_seconds_bucket",
            "octopods_jobs_in_flight{channel=\"c\"} 0",
            "octopods_broker_connected 0",
            "octopods_broker_reconnects_total 0",
            "octopods_worker_build_info{version=",
            "octopods_channel_rate_budget{channel=\"c\"} 2.5",
            // Known label values exist at zero before anything happened.
            "octopods_dead_lettered_total{channel=\"c\",reason=\"internal\"} 0",
            "octopods_retries_total{cause=\"timeout\",channel=\"c\"} 0",
            "octopods_api_requests_total{channel=\"c\",status=\"429\"} 0",
            "octopods_delayed_retries_total{channel=\"c\",delay=\"10s\"} 0",
            "octopods_settle_failures_total{channel=\"c\",kind=\"unroutable\"} 0",
            "octopods_job_duration_seconds_count{channel=\"c\",outcome=\"dead_lettered\"} 0",
            "octopods_settle_failing 0",
            "octopods_broker_blocked 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn histograms_for_all_channels_have_one_series_per_label_set() {
        let m = Metrics::new().histograms_by_channel(false);
        for c in ["a", "b"] {
            m.register_channel(c, 1.0, &[], 2);
            m.api_request(c, Some(200), Duration::from_millis(5));
            m.waited_for_limit(c, Duration::ZERO);
            m.queue_wait(c, Duration::from_secs(1));
            m.completed(c, EventKind::Sent, Duration::from_millis(9));
        }
        let text = m.render();
        for name in [
            "octopods_api_request_duration_seconds_count{channel=\"*\"} 2",
            "octopods_rate_limit_wait_seconds_count{channel=\"*\"} 2",
            "octopods_job_queue_wait_seconds_count{channel=\"*\"} 2",
            "octopods_job_duration_seconds_count{channel=\"*\",outcome=\"sent\"} 2",
            // Counters and gauges stay by channel.
            "octopods_api_requests_total{channel=\"a\",status=\"200\"} 1",
            "octopods_jobs_completed_total{channel=\"b\",outcome=\"sent\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(
            !text.contains("_seconds_count{channel=\"a\""),
            "a histogram by channel:\n{text}"
        );
    }
}
