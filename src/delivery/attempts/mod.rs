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
    let mut backoff = schedule(retry);
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    // Time already spent by earlier deliveries; never negative.
    let before: Duration = history
        .first_attempt_at
        .map(|first| crate::clock::between(first, now))
        .unwrap_or_default();
    let prior = history.attempts;
    let mut attempts = prior;
    // A job whose window Octopods already reported closed goes on as a template.
    let mut via = if history.template && job.fallback.is_some() {
        Via::Template
    } else {
        Via::Interactive
    };
    loop {
        if let Err(dead) = deadlines(job, &mut via) {
            return (dead, attempts.max(1));
        }
        let Some((permit, waited)) = turn(job, target)
            .instrument(crate::observe::trace::stage_span("rate wait"))
            .await
        else {
            return (Final::HandBack, attempts);
        };
        metrics.waited_for_limit(target.channel, waited);
        // The deadline may have passed while the job waited for its turn.
        if let Err(dead) = deadlines(job, &mut via) {
            return (dead, attempts.max(1));
        }
        attempts = attempts.saturating_add(1);
        Span::current().record("attempt", attempts);
        let (endpoint, body) = match (&job.fallback, via) {
            (Some((template, body)), Via::Template) => {
                (Endpoint::Template(template.id), body.clone())
            }
            _ => (Endpoint::Interactive, job.request_body.clone()),
        };
        let result = sender.send(endpoint, body, attempts).await;
        drop(permit);
        metrics.api_request(target.channel, result.status, result.duration);
        let (cause, after, failure) = match result.outcome {
            Outcome::Sent(receipt) => return (Final::Sent(receipt, via), attempts),
            // Octopods (or Meta) says the window is closed: the template, now.
            Outcome::DeadLetter(Reason::Window, failure)
                if via == Via::Interactive && job.fallback.is_some() =>
            {
                info!(error = %escape(&failure.message), "the window is closed; sending the fallback template");
                via = Via::Template;
                continue;
            }
            Outcome::DeadLetter(reason, failure) => {
                return (Final::DeadLetter(reason, failure), attempts);
            }
            Outcome::Retry {
                cause: RetryCause::Paused,
                failure,
                ..
            } => (RetryCause::Paused, Some(retry.paused_delay), failure),
            Outcome::Retry {
                cause,
                after,
                failure,
            } => (cause, after.map(|a| a.min(retry.max_retry_after)), failure),
        };
        if let Some(pause) = after {
            target.limiter.pause(pause);
        }
        // A paused template waits hours by design: only attempts count then.
        let elapsed = match cause {
            RetryCause::Paused => Duration::ZERO,
            _ => before.saturating_add(started.elapsed()),
        };
        let failure = match classify::budget_spent(attempts, elapsed, retry, failure) {
            Ok(failure) => failure,
            Err((reason, failure)) => {
                info!(cause = cause.as_str(), error = %escape(&failure.message), "retries exhausted");
                return (Final::DeadLetter(reason, failure), attempts);
            }
        };
        metrics.retried(target.channel, cause);
        let wait = backoff
            .next_backoff()
            .unwrap_or(retry.max_interval)
            .max(after.unwrap_or_default());
        let durable = !retry.delays.is_empty();
        // Past this delivery's immediate attempts, or asked to wait longer
        // than a backoff step: the delay queue holds it, not this delivery.
        if durable
            && (attempts.saturating_sub(prior) >= retry.immediate_attempts
                || wait > retry.max_interval)
        {
            return (
                Final::Delay(Later {
                    cause,
                    after,
                    failure,
                    via,
                }),
                attempts,
            );
        }
        info!(
            cause = cause.as_str(),
            error = %escape(&failure.message),
            delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "transient failure, will retry"
        );
        tokio::select! {
            biased;
            // Stopping between attempts: keep the count, retry later.
            () = target.stop.cancelled() => {
                let next = if durable { Final::Delay(Later { cause, after, failure, via }) } else { Final::HandBack };
                return (next, attempts);
            }
            () = tokio::time::sleep(wait) => {}
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
