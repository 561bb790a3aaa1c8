//! What happens inside the worker that SREs must see, one type each, and
//! one [`Emit::emit`] that does all they see of it — the log line and the
//! metric — so the two never drift apart (vector's internal events). A
//! call site says what happened; this module says how it shows.

use std::{fmt::Display, time::Duration};

use tracing::{debug, error, info, warn};

use crate::{
    observe::{logging::escape, metrics::Metrics},
    outcome::EventKind,
};

/// Something that happened, shown in the log and counted.
pub(crate) trait Emit {
    fn emit(self, metrics: &Metrics);
}

/// A job's retry headers were not signed by this deployment: ignored, the
/// job counts as fresh.
pub(crate) struct ForgedHistory<'a> {
    pub(crate) channel: &'a str,
}

impl Emit for ForgedHistory<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!("retry headers not written by this deployment were ignored");
        metrics.forged_history(self.channel);
    }
}

/// A job this worker sent already came again: its `sent` event is
/// published again instead of a second send.
pub(crate) struct DuplicateSuppressed<'a> {
    pub(crate) channel: &'a str,
}

impl Emit for DuplicateSuppressed<'_> {
    fn emit(self, metrics: &Metrics) {
        info!("already sent by this worker; re-publishing its sent event instead");
        metrics.duplicate_suppressed(self.channel);
    }
}

/// The worker panicked while deciding a job.
pub(crate) struct JobPanicked<'a> {
    pub(crate) channel: &'a str,
    pub(crate) message: &'a str,
}

impl Emit for JobPanicked<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(panic = %escape(self.message), "the worker panicked on this job");
        metrics.panicked(self.channel);
    }
}

/// A broker session panicked; it starts again after a backoff.
pub(crate) struct SessionPanicked<'a> {
    pub(crate) message: &'a str,
}

impl Emit for SessionPanicked<'_> {
    fn emit(self, metrics: &Metrics) {
        error!(panic = %escape(self.message), "the broker session panicked; starting it again");
        metrics.session_panicked();
    }
}

/// A record of the control stream failed its checks (or panicked while
/// applied) and was skipped.
pub(crate) struct ControlRecordSkipped<'a> {
    pub(crate) why: &'a str,
    /// `unreadable`, `out_of_range`, `refused` (an add or remove this
    /// replica cannot carry out: its key unreadable, a channel of the file)
    /// or `panicked`.
    pub(crate) reason: &'static str,
}

impl Emit for ControlRecordSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(why = %escape(self.why), reason = self.reason, "skipped a record of the control stream");
        metrics.control_rejected(self.reason);
    }
}

/// A result event found no queue bound to the results exchange.
pub(crate) struct EventUnroutable<'a> {
    pub(crate) channel: &'a str,
    pub(crate) kind: EventKind,
}

impl Emit for EventUnroutable<'_> {
    fn emit(self, metrics: &Metrics) {
        warn!(
            event = self.kind.as_str(),
            "result event was unroutable: no queue bound to the results exchange"
        );
        metrics.event_unroutable(self.channel, self.kind);
    }
}

/// The broker refused what a settlement publishes: the delivery is handed
/// back after `retry_in`.
pub(crate) struct SettleFailed<'a> {
    pub(crate) channel: &'a str,
    /// The refusal's kind, a metric label (`nack`, `returned`, `timeout`, …).
    pub(crate) kind: &'static str,
    pub(crate) error: &'a dyn Display,
    pub(crate) retry_in: Duration,
}

impl Emit for SettleFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        let retry_in_ms = u64::try_from(self.retry_in.as_millis()).unwrap_or(u64::MAX);
        error!(error = %self.error, retry_in_ms,
            "could not publish the job's result; handing it back to its queue after a pause");
        metrics.settle_failed(self.channel, self.kind);
    }
}

/// A job carried a `traceparent` that is not a W3C trace context: ignored.
pub(crate) struct TraceContextInvalid<'a> {
    pub(crate) channel: &'a str,
}

impl Emit for TraceContextInvalid<'_> {
    fn emit(self, metrics: &Metrics) {
        debug!("a malformed traceparent was ignored");
        metrics.trace_context_invalid(self.channel);
    }
}
