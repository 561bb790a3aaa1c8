//! One delivery's attempts. Before each: the deadlines, the broker's flow
//! control, then the channel's turn ([`Limiter::turn`]: a request permit,
//! then the rate slot, one job of the channel at a time), and a stop signal
//! always wins over a ready slot. After each:
//! [`classify`](crate::octopods::classify)'s verdict. Transient failures back off
//! exponentially with jitter (`backoff`), with `Retry-After` as a floor, for
//! `immediate_attempts`; then (or at once for a long `Retry-After`) the job is
//! handed back for a durable delayed retry ([`Final::Delay`]), until its
//! attempt or time budget (counted across deliveries) runs out.
//!
//! Generic over [`Sender`], so every exit is unit-tested with a fake sender
//! under paused time.

use std::time::Duration;

use backoff::{ExponentialBackoff, backoff::Backoff};
use time::OffsetDateTime;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info};

use crate::{
    broker::headers::History,
    config::RetryConfig,
    delivery::limit::Limiter,
    job::Job,
    observe::health::Health,
    observe::logging::escape,
    observe::metrics::Metrics,
    octopods::classify,
    octopods::client::{Endpoint, Sender},
    outcome::Via,
    outcome::{Failure, Outcome, Reason, Receipt, RetryCause},
};

/// How a delivery's attempts ended.
#[derive(Debug)]
pub(crate) enum Final {
    Sent(Receipt, Via),
    DeadLetter(Reason, Failure),
    /// Still transient: retry later through a delay queue, waiting at least
    /// `after`.
    Delay(Later),
    /// The replica is stopping and the job had not reached its request: put
    /// it back in its queue untouched.
    HandBack,
}

/// A transient failure to retry later from a delay queue.
#[derive(Debug)]
pub(crate) struct Later {
    pub(crate) cause: RetryCause,
    /// At least this long (`Retry-After`, or the paused-template delay).
    pub(crate) after: Option<Duration>,
    pub(crate) failure: Failure,
    /// The message it was sending.
    pub(crate) via: Via,
}

/// What the attempts need of the channel and the process.
pub(crate) struct Target<'a> {
    pub(crate) channel: &'a str,
    pub(crate) limiter: &'a Limiter,
    /// Requests open at once, over all channels.
    pub(crate) open: &'a Semaphore,
    /// The publishing state's gate: no request while the broker blocks publishing,
    /// since the result could not be published.
    pub(crate) health: &'a Health,
    /// Cancelled when this replica stops taking jobs: a job that has not
    /// reached its request goes back instead, so a standby taking over the
    /// channel never shares its budget with a replica that is draining.
    pub(crate) stop: &'a CancellationToken,
}

/// The backoff schedule of [`RetryConfig`]. Its own elapsed-time limit is
/// off: the job's budget is counted across deliveries by [`classify`].
pub(crate) fn schedule(retry: &RetryConfig) -> ExponentialBackoff {
    ExponentialBackoff {
        current_interval: retry.initial_interval,
        initial_interval: retry.initial_interval,
        randomization_factor: 0.5,
        multiplier: 2.0,
        max_interval: retry.max_interval,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// Attempts `job` until it is sent, must be dead-lettered, or should wait in
/// a delay queue. The returned count includes earlier deliveries' attempts.
pub(crate) async fn attempt<S: Sender>(
    job: &Job,
    target: &Target<'_>,
    history: History,
    sender: &S,
    retry: &RetryConfig,
    metrics: &Metrics,
) -> (Final, u32) {
    let now = OffsetDateTime::now_utc();
    let mut attempts = Attempts {
        job,
        target,
        sender,
        retry,
        metrics,
        backoff: schedule(retry),
        started: Instant::now(),
        // Time already spent by earlier deliveries; never negative.
        before: history
            .first_attempt_at
            .map(|first| crate::clock::between(first, now))
            .unwrap_or_default(),
        prior: history.attempts,
        count: history.attempts,
        // A job whose window Octopods already reported closed goes on as a template.
        via: if history.template && job.fallback.is_some() {
            Via::Template
        } else {
            Via::Interactive
        },
    };
    let end = loop {
        if let Some(end) = attempts.once().await {
            break end;
        }
    };
    (end, attempts.count)
}

/// One delivery's attempts and what they have counted.
struct Attempts<'a, S> {
    job: &'a Job,
    target: &'a Target<'a>,
    sender: &'a S,
    retry: &'a RetryConfig,
    metrics: &'a Metrics,
    backoff: ExponentialBackoff,
    started: Instant,
    /// Time earlier deliveries spent on the job.
    before: Duration,
    /// Attempts earlier deliveries made.
    prior: u32,
    /// Attempts so far, earlier deliveries' included.
    count: u32,
    via: Via,
}

/// Why an attempt failed in a way worth another.
struct Transient {
    cause: RetryCause,
    /// Octopods' `Retry-After` (capped), or a paused template's delay.
    after: Option<Duration>,
    failure: Failure,
}

impl<S: Sender> Attempts<'_, S> {
    /// One attempt, and the end of the attempts if it is one.
    async fn once(&mut self) -> Option<Final> {
        if let Err(dead) = deadlines(self.job, &mut self.via) {
            self.count = self.count.max(1);
            return Some(dead);
        }
        let Some((permit, waited)) = turn(self.job, self.target)
            .instrument(crate::observe::trace::stage_span("rate wait"))
            .await
        else {
            return Some(Final::HandBack);
        };
        self.metrics.waited_for_limit(self.target.channel, waited);
        // The deadline may have passed while the job waited for its turn.
        if let Err(dead) = deadlines(self.job, &mut self.via) {
            self.count = self.count.max(1);
            return Some(dead);
        }
        self.count = self.count.saturating_add(1);
        Span::current().record("attempt", self.count);
        let (endpoint, body) = match (&self.job.fallback, self.via) {
            (Some((template, body)), Via::Template) => {
                (Endpoint::Template(template.id), body.clone())
            }
            _ => (Endpoint::Interactive, self.job.request_body.clone()),
        };
        let result = self.sender.send(endpoint, body, self.count).await;
        drop(permit);
        let channel = self.target.channel;
        self.metrics
            .api_request(channel, result.status, result.duration);
        let transient = match result.outcome {
            Outcome::Sent(receipt) => return Some(Final::Sent(receipt, self.via)),
            // Octopods (or Meta) says the window is closed: the template, now.
            Outcome::DeadLetter(Reason::Window, failure)
                if self.via == Via::Interactive && self.job.fallback.is_some() =>
            {
                info!(error = %escape(&failure.message), "the window is closed; sending the fallback template");
                self.via = Via::Template;
                return None;
            }
            Outcome::DeadLetter(reason, failure) => {
                return Some(Final::DeadLetter(reason, failure));
            }
            Outcome::Retry {
                cause: RetryCause::Paused,
                failure,
                ..
            } => Transient {
                cause: RetryCause::Paused,
                after: Some(self.retry.paused_delay),
                failure,
            },
            Outcome::Retry {
                cause,
                after,
                failure,
            } => Transient {
                cause,
                after: after.map(|a| a.min(self.retry.max_retry_after)),
                failure,
            },
        };
        self.after_failure(transient).await
    }

    /// After a transient failure: the budget spent (dead letter), a delay
    /// queue (durable retry), or a backoff here and another attempt (`None`).
    async fn after_failure(&mut self, t: Transient) -> Option<Final> {
        let retry = self.retry;
        if let Some(pause) = t.after {
            self.target.limiter.pause(pause);
        }
        // A paused template waits hours by design: only attempts count then.
        let elapsed = match t.cause {
            RetryCause::Paused => Duration::ZERO,
            _ => self.before.saturating_add(self.started.elapsed()),
        };
        let failure = match classify::budget_spent(self.count, elapsed, retry, t.failure) {
            Ok(failure) => failure,
            Err((reason, failure)) => {
                info!(cause = t.cause.as_str(), error = %escape(&failure.message), "retries exhausted");
                return Some(Final::DeadLetter(reason, failure));
            }
        };
        self.metrics.retried(self.target.channel, t.cause);
        let wait = self
            .backoff
            .next_backoff()
            .unwrap_or(retry.max_interval)
            .max(t.after.unwrap_or_default());
        let later = Later {
            cause: t.cause,
            after: t.after,
            failure,
            via: self.via,
        };
        let durable = !retry.delays.is_empty();
        // Past this delivery's immediate attempts, or asked to wait longer
        // than a backoff step: the delay queue holds it, not this delivery.
        let here = self.count.saturating_sub(self.prior);
        if durable && (here >= retry.immediate_attempts || wait > retry.max_interval) {
            return Some(Final::Delay(later));
        }
        info!(
            cause = later.cause.as_str(),
            error = %escape(&later.failure.message),
            delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "transient failure, will retry"
        );
        tokio::select! {
            biased;
            // Stopping between attempts: keep the count, retry later.
            () = self.target.stop.cancelled() => {
                Some(if durable { Final::Delay(later) } else { Final::HandBack })
            }
            () = tokio::time::sleep(wait) => None,
        }
    }
}

/// The checks before each attempt: past `expires_at` the job is dead; a
/// closed window switches to the fallback template if there is one.
fn deadlines(job: &Job, via: &mut Via) -> Result<(), Final> {
    match job.check_deadlines(OffsetDateTime::now_utc(), *via) {
        Ok(()) => Ok(()),
        Err((Reason::Window, _)) if job.fallback.is_some() => {
            *via = Via::Template;
            Ok(())
        }
        Err((reason, message)) => Err(Final::DeadLetter(reason, Failure::local(message))),
    }
}

/// Waits for the job's turn: the broker accepting publishes, a request
/// permit, the rate slot, and the broker still accepting publishes. A slot
/// that came while the broker blocked is not kept: after the block the job
/// waits for a new one, so jobs that queued up during a block go out at the
/// channel's rate, not all at once. `None` when the replica stops first.
async fn turn<'a>(
    job: &Job,
    target: &'a Target<'_>,
) -> Option<(Option<tokio::sync::SemaphorePermit<'a>>, Duration)> {
    let stop = target.stop;
    let mut waited = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            () = target.health.until_open() => {}
        }
        let (permit, w) = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            turn = target.limiter.turn(job.phone.as_str(), target.open) => turn,
        };
        waited = waited.saturating_add(w);
        // A slot and a stop at once: the stop wins.
        if stop.is_cancelled() {
            return None;
        }
        // The broker may have blocked while the job waited for its slot.
        // (The semaphore is never closed; without a permit sending is still correct.)
        if target.health.is_open() {
            return Some((permit, waited));
        }
    }
}

/// The delay queue for the job's next durable retry: the configured delay for
/// this round (the last one repeats), raised to the first that honours `floor`.
pub(crate) fn pick_delay(
    delays: &[Duration],
    delayed_so_far: u32,
    floor: Option<Duration>,
) -> Option<Duration> {
    let last = *delays.last()?;
    let index = usize::try_from(delayed_so_far).unwrap_or(usize::MAX);
    let delay = delays.get(index).copied().unwrap_or(last);
    Some(match floor {
        Some(f) if f > delay => delays.iter().copied().find(|d| *d >= f).unwrap_or(last),
        _ => delay,
    })
}

#[cfg(test)]
mod tests;
