//! The Prometheus registry and one method per thing that happens (CONTRACT §9).
//! Label values come from closed enums or configured channel names; never a
//! phone number or a key.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    settle_failing: IntGauge,
    broker_blocked: IntGauge,
    paused: IntGaugeVec,
    node: IntGaugeVec,
    queue_wait: HistogramVec,
    control_rejected: IntCounterVec,
    session_panics: IntCounterVec,
}

const API_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 43200.0, 86400.0,
];
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[allow(clippy::panic)] // constant definitions: see `Metrics::new`
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

#[allow(clippy::panic)] // constant definitions: see `Metrics::new`
fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    h
}

// Metric definitions are constants: a failure to build one is a programming
// error that every test run would show, never something input can cause.
#[allow(clippy::panic)]
impl Metrics {
    /// Builds the registry. Metric definitions are constants, so a failure
    /// here is a programming error caught by every test.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "octopods_jobs_in_flight",
                "Jobs received and not yet settled.",
            ),
            &["channel"],
        )
        .unwrap_or_else(|e| panic!("in_flight: {e}"));
        let broker_connected = IntGauge::new(
            "octopods_broker_connected",
            "1 while connected to RabbitMQ and consuming, else 0.",
        )
        .unwrap_or_else(|e| panic!("broker_connected: {e}"));
        let broker_reconnects = IntCounter::new(
            "octopods_broker_reconnects_total",
            "Broker connections re-established after a loss.",
        )
        .unwrap_or_else(|e| panic!("broker_reconnects: {e}"));
        let build_info = IntGaugeVec::new(
            Opts::new("octopods_worker_build_info", "Build information; always 1."),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("build_info: {e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let budget = prometheus::GaugeVec::new(
            Opts::new(
                "octopods_channel_rate_budget",
                "Configured sends per second for the channel (whole deployment).",
            ),
            &["channel"],
        )
        .unwrap_or_else(|e| panic!("budget: {e}"));
        let settle_failing = IntGauge::new(
            "octopods_settle_failing",
            "1 while the broker refuses the worker's publishes (dead letters, retries, events), else 0.",
        )
        .unwrap_or_else(|e| panic!("settle_failing: {e}"));
        let broker_blocked = IntGauge::new(
            "octopods_broker_blocked",
            "1 while RabbitMQ blocks the worker's publishing connection (memory or disk alarm), else 0.",
        )
        .unwrap_or_else(|e| panic!("broker_blocked: {e}"));
        let paused = IntGaugeVec::new(
            Opts::new(
                "octopods_channel_paused",
                "1 while operators have paused the channel (`octopods-worker channel pause`), else 0.",
            ),
            &["channel"],
        )
        .unwrap_or_else(|e| panic!("paused: {e}"));
        let node = IntGaugeVec::new(
            Opts::new(
                "octopods_broker_node",
                "1 for the broker node (host:port) the worker is connected to, 0 for the other configured nodes.",
            ),
            &["node"],
        )
        .unwrap_or_else(|e| panic!("node: {e}"));
        for c in [
            Box::new(paused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(node.clone()),
            Box::new(settle_failing.clone()),
            Box::new(broker_blocked.clone()),
            Box::new(in_flight.clone()),
            Box::new(broker_connected.clone()),
            Box::new(broker_reconnects.clone()),
            Box::new(build_info),
            Box::new(budget.clone()),
        ] {
            r.register(c).unwrap_or_else(|e| panic!("register: {e}"));
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Process metrics are a bonus; a registry without them still works.
            drop(r.register(Box::new(pc)));
        }
        let metrics = Self {
            received: counter(
                r,
                "octopods_jobs_received_total",
                "Jobs delivered to this worker.",
                &["channel"],
            ),
            completed: counter(
                r,
                "octopods_jobs_completed_total",
                "Jobs settled, by outcome (sent or dead_lettered).",
                &["channel", "outcome"],
            ),
            dead_lettered: counter(
                r,
                "octopods_dead_lettered_total",
                "Jobs moved to the dead-letter queue, by reason.",
                &["channel", "reason"],
            ),
            retries: counter(
                r,
                "octopods_retries_total",
                "Attempts retried after a transient failure, by cause.",
                &["channel", "cause"],
            ),
            api_requests: counter(
                r,
                "octopods_api_requests_total",
                "Requests to Octopods, by HTTP status or `error`.",
                &["channel", "status"],
            ),
            api_duration: histogram(
                r,
                "octopods_api_request_duration_seconds",
                "Duration of one Octopods request.",
                &["channel"],
                API_BUCKETS,
            ),
            job_duration: histogram(
                r,
                "octopods_job_duration_seconds",
                "Time from receipt to settle.",
                &["channel", "outcome"],
                JOB_BUCKETS,
            ),
            limit_wait: histogram(
                r,
                "octopods_rate_limit_wait_seconds",
                "Time a job waited for its channel's rate limit.",
                &["channel"],
                WAIT_BUCKETS,
            ),
            events_unroutable: counter(
                r,
                "octopods_events_unroutable_total",
                "Result events returned by the broker as unroutable.",
                &["channel", "event"],
            ),
            delayed: counter(
                r,
                "octopods_delayed_retries_total",
                "Jobs handed to a durable delay queue, by delay.",
                &["channel", "delay"],
            ),
            duplicates_suppressed: counter(
                r,
                "octopods_duplicates_suppressed_total",
                "Jobs already sent by this process whose sent event was re-published instead.",
                &["channel"],
            ),
            status_events: counter(
                r,
                "octopods_status_events_total",
                "Delivery-status events published (delivered, read, failed, status_unknown).",
                &["channel", "status"],
            ),
            polls: counter(
                r,
                "octopods_status_polls_total",
                "Status polls of sent messages, by HTTP status or `error`.",
                &["channel", "status"],
            ),
            sent_via: counter(
                r,
                "octopods_messages_sent_total",
                "Messages Octopods accepted, by what was sent (interactive, or the fallback template).",
                &["channel", "via"],
            ),
            panics: counter(
                r,
                "octopods_panics_total",
                "Deliveries on which the worker panicked (each still settled).",
                &["channel"],
            ),
            settle_failures: counter(
                r,
                "octopods_settle_failures_total",
                "Settlements whose publish the broker refused, by kind; the job went back to its queue.",
                &["channel", "kind"],
            ),
            forged: counter(
                r,
                "octopods_forged_headers_total",
                "Deliveries whose retry headers were not signed by this deployment (ignored).",
                &["channel"],
            ),
            queue_wait: histogram(
                r,
                "octopods_job_queue_wait_seconds",
                "Time a job waited in its queue before this worker received it, from the producer's AMQP `timestamp` (first delivery only; jobs without one are not counted).",
                &["channel"],
                QUEUE_WAIT_BUCKETS,
            ),
            control_rejected: counter(
                r,
                "octopods_control_rejected_total",
                "Records of the control stream skipped: unreadable, out of range, or panicked while applied.",
                &["reason"],
            ),
            session_panics: counter(
                r,
                "octopods_session_panics_total",
                "Broker sessions that ended in a panic (caught; the session started again).",
                &[],
            ),
            settle_failing,
            broker_blocked,
            paused,
            node,
            in_flight,
            budget,
            broker_connected,
            broker_reconnects,
            registry,
        };
        for reason in ["unreadable", "out_of_range", "panicked"] {
            metrics.control_rejected.with_label_values(&[reason]);
        }
        metrics.session_panics.with_label_values::<&str>(&[]);
        metrics
    }

    /// Makes every per-channel series whose labels are known (the channel ×
    /// the closed enums, the delay queues) exist at zero, so alerts,
    /// dashboards and `rate()` work before the first event.
    pub fn register_channel(&self, channel: &str, rate_per_second: f64, delays: &[String]) {
        self.budget
            .with_label_values(&[channel])
            .set(rate_per_second);
        for c in [
            &self.received,
            &self.duplicates_suppressed,
            &self.panics,
            &self.forged,
        ] {
            c.with_label_values(&[channel]);
        }
        self.in_flight.with_label_values(&[channel]);
        self.paused.with_label_values(&[channel]);
        self.queue_wait.with_label_values(&[channel]);
        self.api_duration.with_label_values(&[channel]);
        self.limit_wait.with_label_values(&[channel]);
        for k in EventKind::OUTCOMES {
            self.completed.with_label_values(&[channel, k.as_str()]);
            self.job_duration.with_label_values(&[channel, k.as_str()]);
        }
        for k in EventKind::ALL {
            self.events_unroutable
                .with_label_values(&[channel, k.as_str()]);
        }
        for k in EventKind::STATUSES {
            self.status_events.with_label_values(&[channel, k.as_str()]);
        }
        for v in crate::job::Via::ALL {
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

    pub fn sent_via(&self, channel: &str, via: crate::job::Via) {
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

    pub fn forged_history(&self, channel: &str) {
        self.forged.with_label_values(&[channel]).inc();
    }

    pub fn queue_wait(&self, channel: &str, waited: Duration) {
        self.queue_wait
            .with_label_values(&[channel])
            .observe(waited.as_secs_f64());
    }

    pub fn received(&self, channel: &str) {
        self.received.with_label_values(&[channel]).inc();
        self.in_flight.with_label_values(&[channel]).inc();
    }

    /// A job left the worker's hands without settling (shutdown, broker loss).
    pub fn abandoned(&self, channel: &str) {
        self.in_flight.with_label_values(&[channel]).dec();
    }

    pub fn completed(&self, channel: &str, completion: EventKind, took: Duration) {
        self.completed
            .with_label_values(&[channel, completion.as_str()])
            .inc();
        self.job_duration
            .with_label_values(&[channel, completion.as_str()])
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
            .with_label_values(&[channel])
            .observe(took.as_secs_f64());
    }

    pub fn waited_for_limit(&self, channel: &str, waited: Duration) {
        self.limit_wait
            .with_label_values(&[channel])
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
        m.register_channel("c", 2.5, &["10s".into()]);
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
}
