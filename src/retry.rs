//! One delivery's attempts. Before each: the deadlines, the broker's flow
//! control, a request permit, then the channel's rate slot — in that order,
//! so permits freed in bulk can never spend more than the rate allows, and a
//! stop signal always wins over a ready slot. After each:
//! [`classify`](crate::classify)'s verdict. Transient failures back off
//! exponentially with jitter (`backoff`), with `Retry-After` as a floor, for
//! `immediate_attempts`; then (or at once for a long `Retry-After`) the job is
//! handed back for a durable delayed retry ([`Final::Delay`]), until its
//! attempt or time budget (counted across deliveries) runs out.
//!
//! Generic over [`Sender`], so every exit is unit-tested with a fake sender
//! under paused time.

use std::{future::Future, time::Duration};

use backoff::{ExponentialBackoff, backoff::Backoff};
use time::OffsetDateTime;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info};

use crate::{
    broker::{Flow, headers::History},
    classify,
    config::RetryConfig,
    job::Job,
    limit::Limiter,
    metrics::Metrics,
    octopods::Attempt,
    outcome::{Failure, Outcome, Reason, Receipt, RetryCause},
    telemetry::escape,
};

/// Sends one request for a job: the Octopods client, or a fake in tests.
pub(crate) trait Sender {
    fn send(&self, body: bytes::Bytes) -> impl Future<Output = Attempt> + Send;
}

/// How a delivery's attempts ended.
#[derive(Debug)]
pub(crate) enum Final {
    Sent(Receipt),
    DeadLetter(Reason, Failure),
    /// Still transient: retry later through a delay queue, waiting at least
    /// `after`.
    Delay {
        cause: RetryCause,
        after: Option<Duration>,
        failure: Failure,
    },
    /// The replica is stopping and the job had not reached its request: put
    /// it back in its queue untouched.
    Requeue,
}

/// What the attempts need of the channel and the process.
pub(crate) struct Target<'a> {
    pub(crate) channel: &'a str,
    pub(crate) limiter: &'a Limiter,
    /// Requests open at once, over all channels.
    pub(crate) open: &'a Semaphore,
    /// The broker's flow control: no request while it blocks publishing,
    /// since the result could not be published.
    pub(crate) flow: &'a Flow,
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
        .map(|first| (now - first).try_into().unwrap_or_default())
        .unwrap_or_default();
    let prior = history.attempts;
    let mut attempts = prior;
    loop {
        let now = OffsetDateTime::now_utc();
        if let Err((reason, message)) = job.check_deadlines(now) {
            return (
                Final::DeadLetter(reason, Failure::local(message)),
                attempts.max(1),
            );
        }
        let Some((permit, waited)) = turn(job, target).await else {
            return (Final::Requeue, attempts);
        };
        metrics.waited_for_limit(target.channel, waited);
        // The deadline may have passed while the job waited for its turn.
        if let Err((reason, message)) = job.check_deadlines(OffsetDateTime::now_utc()) {
            return (
                Final::DeadLetter(reason, Failure::local(message)),
                attempts.max(1),
            );
        }
        attempts = attempts.saturating_add(1);
        Span::current().record("attempt", attempts);
        let result = sender.send(job.request_body.clone()).await;
        drop(permit);
        metrics.api_request(target.channel, result.status, result.duration);
        let (cause, after, failure) = match result.outcome {
            Outcome::Sent(receipt) => return (Final::Sent(receipt), attempts),
            Outcome::DeadLetter(reason, failure) => {
                return (Final::DeadLetter(reason, failure), attempts);
            }
            Outcome::Retry {
                cause,
                after,
                failure,
            } => (cause, after.map(|a| a.min(retry.max_retry_after)), failure),
        };
        if let Some(pause) = after {
            target.limiter.pause(pause);
        }
        let elapsed = before.saturating_add(started.elapsed());
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
                Final::Delay {
                    cause,
                    after,
                    failure,
                },
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
                let next = if durable { Final::Delay { cause, after, failure } } else { Final::Requeue };
                return (next, attempts);
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Waits for the job's turn: the broker accepting publishes, a request
/// permit, the rate slot, and the broker still accepting publishes. `None`
/// when the replica stops first.
async fn turn<'a>(
    job: &Job,
    target: &'a Target<'_>,
) -> Option<(Option<tokio::sync::SemaphorePermit<'a>>, Duration)> {
    let stop = target.stop;
    tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        () = target.flow.until_open() => {}
    }
    let permit = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        p = target.open.acquire() => p.ok(),
    };
    let waited = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        w = target.limiter.ready(job.phone.as_str()) => w,
    };
    // The broker may have blocked while the job waited for its slot: the
    // last gate before the request is the flow again.
    tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        () = target.flow.until_open() => {}
    }
    // A slot and a stop at once: the stop wins.
    if stop.is_cancelled() {
        return None;
    }
    // (The semaphore is never closed; without a permit sending is still correct.)
    Some((permit, waited))
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
