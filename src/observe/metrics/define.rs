//! The metric definitions: names, help texts, labels and buckets, and the
//! registry they are registered in ([`Metrics::new`]).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::Metrics;

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

/// Registers a metric built from constant definitions (see `Metrics::new`).
#[allow(clippy::panic)] // constant definitions: see `Metrics::new`
fn register<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.unwrap_or_else(|e| panic!("metric definition: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("register: {e}"));
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

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
        let in_flight = gauge_vec(
            r,
            "octopods_jobs_in_flight",
            "Jobs received and not yet settled.",
            &["channel"],
        );
        let broker_connected = register(
            r,
            IntGauge::new(
                "octopods_broker_connected",
                "1 while connected to RabbitMQ and consuming, else 0.",
            ),
        );
        let broker_reconnects = register(
            r,
            IntCounter::new(
                "octopods_broker_reconnects_total",
                "Broker connections re-established after a loss.",
            ),
        );
        gauge_vec(
            r,
            "octopods_worker_build_info",
            "Build information; always 1.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let budget = register(
            r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "octopods_channel_rate_budget",
                    "Configured sends per second for the channel (whole deployment).",
                ),
                &["channel"],
            ),
        );
        let settle_failing = register(
            r,
            IntGauge::new(
                "octopods_settle_failing",
                "1 while the broker refuses the worker's publishes (dead letters, retries, events), else 0.",
            ),
        );
        let broker_blocked = register(
            r,
            IntGauge::new(
                "octopods_broker_blocked",
                "1 while RabbitMQ blocks the worker's publishing connection (memory or disk alarm), else 0.",
            ),
        );
        let paused = gauge_vec(
            r,
            "octopods_channel_paused",
            "1 while operators have paused the channel (`octopods-worker channel pause`), else 0.",
            &["channel"],
        );
        let node = gauge_vec(
            r,
            "octopods_broker_node",
            "1 for the broker node (host:port) the worker is connected to, 0 for the other configured nodes.",
            &["node"],
        );
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
            trace_invalid: counter(
                r,
                "octopods_trace_context_invalid_total",
                "Deliveries whose `traceparent` header was not W3C's (ignored: the delivery started a trace of its own). Counted only while traces are exported.",
                &["channel"],
            ),
            replies: counter(
                r,
                "octopods_replies_total",
                "Customer messages from the inbox webhooks, by what they came to: matched, ambiguous, unmatched (free text), no_prompt, expired, bad_signature (channel `unknown`).",
                &["channel", "outcome"],
            ),
            reply_webhook: histogram(
                r,
                "octopods_reply_webhook_seconds",
                "Time to answer one inbox webhook (verify, confirm into the broker), by platform and HTTP status.",
                &["platform", "status"],
                API_BUCKETS,
            ),
            reply_match_delay: histogram(
                r,
                "octopods_reply_match_delay_seconds",
                "Time from the customer's message (the platform's timestamp) to its reply being matched and settled.",
                &["platform"],
                QUEUE_WAIT_BUCKETS,
            ),
            reply_lookups: counter(
                r,
                "octopods_reply_lookups_total",
                "Lookups of a contact's phone or a message's text in the inbox platform's API, by HTTP status or `error`.",
                &["platform", "status"],
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
            histograms_by_channel: true,
        };
        for reason in ["unreadable", "out_of_range", "refused", "panicked"] {
            metrics.control_rejected.with_label_values(&[reason]);
        }
        metrics.session_panics.with_label_values::<&str>(&[]);
        metrics
    }
}
