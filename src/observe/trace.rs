//! Distributed traces: OpenTelemetry spans exported over OTLP/HTTP.
//!
//! Owns the W3C trace context at the broker's edge: it reads `traceparent`
//! and `tracestate` from a job's AMQP headers (the producer's trace), opens
//! the spans of a delivery — a CONSUMER `process <queue>` span parented on
//! the producer's context, CLIENT spans for Octopods requests, PRODUCER spans
//! for what is published — and writes the publishing span's context into the
//! published message's headers, so whoever consumes a result, a retry copy or
//! a dead letter (and a replay of it) continues the same trace.
//!
//! Off unless `[telemetry]` names a collector. Every span here has target
//! [`TARGET`], which only the exporting layer enables: off, creating one is a
//! cached callsite check and no header is read. Spans carry ids, names and
//! codes only, never a phone number or a key; log events never reach them.

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// The target of every span meant for export (and of nothing else).
pub(crate) const TARGET: &str = "otel";

/// Header names of the W3C trace context.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` W3C allows (32 members of at most 256 bytes is
/// more, but 512 is what vendors must accept); longer ones are dropped.
const MAX_TRACESTATE: usize = 512;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported by this process.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The exporter of a running process; [`Traces::shutdown`] sends what is left.
pub(crate) struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts exporting when `config` (or the environment) names a
    /// collector: a bounded queue, batches sent from a thread of its own, each
    /// export given up after `export_timeout`. Returns the tracer for the
    /// subscriber's layer.
    pub(crate) fn start(config: &TelemetryConfig) -> anyhow::Result<Option<(Self, SdkTracer)>> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let config = config.clone();
        // Built on a thread outside the async runtime: the exporter's
        // blocking HTTP client must not be made (or dropped) on one.
        let provider = std::thread::spawn(move || -> anyhow::Result<SdkTracerProvider> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(config.export_timeout)
                .build()?;
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(config.queue_size)
                .with_max_export_batch_size(config.queue_size.min(512))
                .with_scheduled_delay(config.export_interval)
                .build();
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build();
            Ok(SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(
                    Resource::builder()
                        .with_service_name("octopods-worker")
                        .build(),
                )
                .build())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the trace exporter could not be built"))??;
        let tracer = provider.tracer("octopods-worker");
        ON.store(true, Ordering::Relaxed);
        Ok(Some((Self { provider }, tracer)))
    }

    /// Sends the spans still queued, waiting at most `within` (a collector
    /// that hangs never holds the process's exit longer).
    pub(crate) async fn shutdown(self, within: std::time::Duration) {
        ON.store(false, Ordering::Relaxed);
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "traces: the last spans were not exported")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("traces: the collector did not take the last spans in time");
            }
        }
    }
}

/// What a job's headers said of its trace.
pub(crate) enum Parent {
    /// No trace context: the delivery starts a trace of its own.
    None,
    /// A valid context: the delivery's span continues it.
    Remote(Context),
    /// A `traceparent` that is not W3C's: ignored (and counted).
    Malformed,
}

/// Reads the producer's trace context from AMQP headers (text values only;
/// anything else, or a malformed value, is no context).
pub(crate) fn extract(headers: Option<&FieldTable>) -> Parent {
    let Some(headers) = headers else {
        return Parent::None;
    };
    let Some(parent) = headers.inner().get(TRACEPARENT) else {
        return Parent::None;
    };
    let Some(traceparent) = text(parent) else {
        return Parent::Malformed;
    };
    let carrier = Carrier {
        traceparent,
        tracestate: headers
            .inner()
            .get(TRACESTATE)
            .and_then(text)
            .filter(|s| s.len() <= MAX_TRACESTATE),
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        Parent::Remote(cx)
    } else {
        Parent::Malformed
    }
}

fn text(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The CONSUMER span of one delivery from `queue`, continuing `parent`.
pub(crate) fn process_span(
    queue: &str,
    routing_key: &str,
    message_id: Option<&str>,
    channel: &str,
    parent: Parent,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = message_id,
        octopods.channel = channel,
        octopods.job_id = tracing::field::Empty,
        octopods.outcome = tracing::field::Empty,
    );
    if let Parent::Remote(cx) = parent {
        // Only fails when the span is disabled (traces off): nothing to do.
        drop(span.set_parent(cx));
    }
    span
}

/// The CLIENT span of one Octopods request (`attempt` from 1) to `server`.
pub(crate) fn request_span(method: &str, server: Option<&reqwest::Url>, attempt: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        server.address = server.and_then(reqwest::Url::host_str).unwrap_or_default(),
        server.port = server.and_then(reqwest::Url::port_or_known_default).unwrap_or_default(),
        http.request.resend_count = attempt.saturating_sub(1),
        octopods.attempt = attempt,
        http.response.status_code = tracing::field::Empty,
    )
}

/// `span`'s context as a W3C `traceparent` value, if it is exported.
pub(crate) fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// An INTERNAL span for a stage of the delivery (`validate`, `rate wait`).
pub(crate) fn stage_span(name: &'static str) -> Span {
    tracing::info_span!(target: TARGET, "stage", otel.name = name)
}

/// The PRODUCER span of one publish to `exchange` (`""`: a queue by name).
pub(crate) fn publish_span(exchange: &str, routing_key: &str) -> Span {
    let destination = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    tracing::info_span!(
        target: TARGET,
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = routing_key,
    )
}

/// `headers` with `span`'s trace context in place of any they carried.
/// Unchanged when the span is not exported (traces off): a copy then keeps
/// the context it came with.
pub(crate) fn inject(span: &Span, headers: Option<FieldTable>) -> Option<FieldTable> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return headers;
    }
    let mut kept = headers.map(|h| h.inner().clone()).unwrap_or_default();
    kept.remove(TRACEPARENT);
    kept.remove(TRACESTATE);
    let mut out = Writer(FieldTable::from(kept));
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    Some(out.0)
}

struct Writer(FieldTable);

impl Injector for Writer {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

/// Marks `span` failed (status ERROR), as the OTel conventions have it for
/// a dead-lettered job or a failed request.
pub(crate) fn failed(span: &Span) {
    span.record("otel.status_code", "ERROR");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn a_w3c_traceparent_is_read() {
        let h = headers(&[(
            "traceparent",
            long("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        )]);
        let Parent::Remote(cx) = extract(Some(&h)) else {
            panic!("not read");
        };
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_or_odd_contexts_are_no_context() {
        for bad in [
            long(""),
            long("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            long("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            long("zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            long("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            long(&"0".repeat(100_000)),
            long("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01\n"),
            AMQPValue::LongLongInt(7),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        ] {
            let h = headers(&[("traceparent", bad.clone())]);
            assert!(
                matches!(extract(Some(&h)), Parent::Malformed),
                "{bad:?} was trusted"
            );
        }
        assert!(matches!(extract(None), Parent::None));
        assert!(matches!(
            extract(Some(&FieldTable::default())),
            Parent::None
        ));
    }

    #[test]
    fn without_an_exported_span_the_headers_stay_as_they_were() {
        let h = headers(&[("traceparent", long("kept"))]);
        let out = inject(&Span::none(), Some(h.clone()));
        assert_eq!(out, Some(h));
    }
}
