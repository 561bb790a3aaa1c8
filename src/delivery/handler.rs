//! One delivery, from receipt to ack: the [`Handler`] opens its spans,
//! lets the pipeline decide (a job: [`pipeline::decide`]; a status check:
//! [`pipeline::poll`]) and settle act. A panic in either still settles
//! the delivery: it is never left unacked.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, error, field::Empty, info_span};

use crate::observe::emit::{Emit, JobPanicked, TraceContextInvalid};
use crate::{
    delivery::{
        channel::{ChannelState, Shared},
        consumer::Lane,
        pipeline::{self, Delivered},
        settle::{self, Settler},
        settlement::{self, Context, Report, Settlement},
    },
    observe::{logging::escape, trace},
};

/// One delivery and what it is handled with.
pub(crate) struct Handler {
    pub(super) delivery: Delivery,
    pub(super) lane: Lane,
    pub(super) queue: Arc<str>,
    pub(super) channel: Arc<ChannelState>,
    pub(super) shared: Arc<Shared>,
    pub(super) settler: Arc<Settler>,
    /// Cancelled to hand back what has not reached its request (a pause,
    /// the session's end).
    pub(super) stop: CancellationToken,
}

impl Handler {
    /// Receipt → decision → settle, inside the delivery's spans.
    pub(crate) async fn run(self) {
        let exported = self.exported_span();
        let name = self.channel.config.name.as_str();
        // The log lines' span (with the masked phone), inside the exported one.
        let span = exported.in_scope(|| {
            info_span!(
                "job",
                job_id = Empty,
                channel = name,
                attempt = Empty,
                phone = Empty
            )
        });
        async {
            let (received, settlement) = self.decide(&exported).await;
            if trace::on() {
                record_outcome(&exported, &settlement);
            }
            self.settle(received, settlement).await;
        }
        .instrument(span)
        .instrument(exported.clone())
        .await;
    }

    /// The delivery's exported span (`Span::none()` with traces off), a
    /// child of the context its headers carry.
    fn exported_span(&self) -> Span {
        if !trace::on() {
            return Span::none();
        }
        let name = self.channel.config.name.as_str();
        let parent = trace::extract(self.delivery.properties.headers().as_ref());
        if matches!(parent, trace::Parent::Malformed) {
            TraceContextInvalid { channel: name }.emit(&self.shared.metrics);
        }
        let message_id = self
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        let key = self.delivery.routing_key.as_str();
        trace::process_span(&self.queue, key, message_id, name, parent)
    }

    /// What the delivery comes to, and when a job was received (`None`
    /// for a status check: not a job, not counted as received). Each stage
    /// is boxed: large and short-lived, it would otherwise size every
    /// waiting job's task.
    async fn decide(&self, exported: &Span) -> (Option<Instant>, Settlement) {
        let (channel, shared, stop) = (&*self.channel, &*self.shared, &self.stop);
        let name = channel.config.name.as_str();
        let input = Delivered {
            body: &self.delivery.data,
            properties: &self.delivery.properties,
            trace: exported,
        };
        let (received, decided) = match self.lane {
            Lane::Jobs => {
                shared.metrics.received(name);
                if let Some(waited) = queue_wait(&self.delivery) {
                    shared.metrics.queue_wait(name, waited);
                }
                let decided = Box::pin(pipeline::decide(input, channel, shared, stop));
                (Some(Instant::now()), caught(decided).await)
            }
            Lane::Status => {
                let polled = Box::pin(pipeline::poll(input, channel, shared, stop));
                (None, caught(polled).await)
            }
        };
        let settlement = decided.unwrap_or_else(|message| {
            let panicked = JobPanicked {
                channel: name,
                message: &message,
            };
            panicked.emit(&shared.metrics);
            let ctx = Context {
                names: &shared.names,
                channel: name,
                job: &self.delivery.properties,
                body: &self.delivery.data,
                now: time::OffsetDateTime::now_utc(),
            };
            settlement::after_panic(&ctx, &message)
        });
        (received, settlement)
    }

    /// Carries the settlement out; should settling itself panic, the
    /// delivery is rejected (counted), never left unacked.
    async fn settle(&self, received: Option<Instant>, settlement: Settlement) {
        let name = self.channel.config.name.as_str();
        let (delivery, queue) = (&self.delivery, &*self.queue);
        let settled = Box::pin(
            self.settler
                .settle(delivery, name, queue, received, settlement),
        );
        if let Err(panic) = AssertUnwindSafe(settled).catch_unwind().await {
            let message = crate::observe::logging::panic_message(panic.as_ref());
            error!(panic = %escape(&message), "settling panicked; rejecting the job back to its queue");
            if received.is_some() {
                self.shared.metrics.unsettled(name);
            }
            settle::reject_after_panic(&self.delivery).await;
        }
    }
}

/// The settlement `decided` comes to, or its panic's message.
async fn caught(
    decided: impl std::future::Future<Output = Settlement>,
) -> Result<Settlement, String> {
    AssertUnwindSafe(decided)
        .catch_unwind()
        .await
        .map_err(|panic| crate::observe::logging::panic_message(panic.as_ref()))
}

/// What came of the delivery, on its exported span (a dead letter is an
/// error there, as the OTel conventions have it).
fn record_outcome(exported: &Span, settlement: &Settlement) {
    let outcome = match settlement {
        Settlement::Publish { report, .. } => match report {
            Report::Sent => "sent",
            Report::DeadLettered { reason, .. } => {
                trace::failed(exported);
                reason.as_str()
            }
            Report::Delayed { .. } => "retry",
            Report::Polled { .. } => "polled",
        },
        Settlement::HandBack { .. } => "handed_back",
        Settlement::Reject { .. } => "rejected",
    };
    exported.record("octopods.outcome", outcome);
}

/// How long a job waited in its queue: now less the producer's AMQP
/// `timestamp` (seconds), for a job's first delivery only (a retry copy
/// keeps the timestamp, and its wait is the retry's). A timestamp in the
/// future counts as no wait; more than 30 days as 30 days, so one producer's
/// clock cannot wreck the histogram's sum.
fn queue_wait(delivery: &Delivery) -> Option<Duration> {
    if delivery.redelivered
        || crate::broker::headers::count(
            delivery.properties.headers().as_ref(),
            crate::broker::headers::ATTEMPTS,
        )
        .is_some()
    {
        return None;
    }
    let sent = (*delivery.properties.timestamp())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let waited = Duration::from_secs(now.saturating_sub(sent));
    Some(waited.min(Duration::from_secs(30 * 24 * 3600)))
}
