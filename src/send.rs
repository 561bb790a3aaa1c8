//! One delivery's attempts: before each, the deadlines and the channel's rate
//! limit; after each, [`classify`](crate::classify)'s verdict. Transient
//! failures back off exponentially with jitter (`backoff`), with `Retry-After`
//! as a floor, for `immediate_attempts`; then the job is handed back for a
//! durable delayed retry ([`Final::Delay`]), until the job's attempt or time
//! budget (counted across deliveries) runs out.

use std::time::Duration;

use backoff::{ExponentialBackoff, backoff::Backoff};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, warn};

use crate::{
    config::{ApiKey, RetryConfig},
    job::Job,
    limit::Limiter,
    metrics::Metrics,
    octopods::Client,
    outcome::{Failure, Outcome, Reason, Receipt, RetryCause},
};

/// How a delivery's attempts ended.
#[derive(Debug)]
pub enum Final {
    Sent(Receipt),
    DeadLetter(Reason, Failure),
    /// Still transient after this delivery's immediate attempts: retry later
    /// through a delay queue, waiting at least `after`.
    Delay {
        cause: RetryCause,
        after: Option<Duration>,
        failure: Failure,
    },
    /// The replica is stopping and the job had not reached its request: put
    /// it back in its queue untouched.
    Requeue,
}

/// What earlier deliveries of the job did (from its headers).
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub attempts: u32,
    pub first_attempt_at: Option<OffsetDateTime>,
}

/// What the send stage needs of the channel.
pub struct Target<'a> {
    pub channel: &'a str,
    pub key: &'a ApiKey,
    pub limiter: &'a Limiter,
    /// Cancelled when this replica stops taking jobs: a job that has not
    /// reached its request yet goes back instead, so a standby taking over the
    /// channel never shares its budget with a replica that is draining.
    pub stop: &'a CancellationToken,
}

/// The backoff schedule of [`RetryConfig`].
pub fn schedule(retry: &RetryConfig) -> ExponentialBackoff {
    ExponentialBackoff {
        current_interval: retry.initial_interval,
        initial_interval: retry.initial_interval,
        randomization_factor: 0.5,
        multiplier: 2.0,
        max_interval: retry.max_interval,
        max_elapsed_time: Some(retry.max_elapsed),
        ..ExponentialBackoff::default()
    }
}

/// Attempts `job` until it is sent, must be dead-lettered, or should wait in
/// a delay queue. The returned count includes earlier deliveries' attempts.
pub async fn attempt(
    job: &Job,
    target: &Target<'_>,
    history: History,
    client: &Client,
    retry: &RetryConfig,
    metrics: &Metrics,
) -> (Final, u32) {
    let mut backoff = schedule(retry);
    backoff.reset();
    let prior = history.attempts;
    let mut attempts = prior;
    let first_at = history
        .first_attempt_at
        .unwrap_or_else(OffsetDateTime::now_utc);
    loop {
        if let Err((reason, message)) = job.check_deadlines(OffsetDateTime::now_utc()) {
            return (
                Final::DeadLetter(reason, Failure::local(message)),
                attempts.max(1),
            );
        }
        let waited = tokio::select! {
            waited = target.limiter.ready(job.phone.as_str()) => waited,
            () = target.stop.cancelled() => return (Final::Requeue, attempts),
        };
        metrics.waited_for_limit(target.channel, waited);
        // The deadline may have passed while the job waited for its slot.
        if let Err((reason, message)) = job.check_deadlines(OffsetDateTime::now_utc()) {
            return (
                Final::DeadLetter(reason, Failure::local(message)),
                attempts.max(1),
            );
        }
        attempts += 1;
        Span::current().record("attempt", attempts);
        let result = client.send(target.key, job.request_body.clone()).await;
        metrics.api_request(target.channel, result.status, result.duration);
        match result.outcome {
            Outcome::Sent(receipt) => return (Final::Sent(receipt), attempts),
            Outcome::DeadLetter(reason, failure) => {
                return (Final::DeadLetter(reason, failure), attempts);
            }
            Outcome::Retry {
                cause,
                after,
                failure,
            } => {
                if let Some(pause) = after {
                    target.limiter.pause(pause);
                }
                let elapsed = OffsetDateTime::now_utc() - first_at;
                let next = if attempts >= retry.max_attempts || elapsed >= retry.max_elapsed {
                    None
                } else {
                    backoff.next_backoff()
                };
                let Some(next) = next else {
                    warn!(cause = cause.as_str(), error = %failure.message, "retries exhausted");
                    let failure = Failure {
                        message: format!("{attempts} attempts: {}", failure.message),
                        ..failure
                    };
                    return (
                        Final::DeadLetter(Reason::RetriesExhausted, failure),
                        attempts,
                    );
                };
                metrics.retried(target.channel, cause);
                if attempts - prior >= retry.immediate_attempts && !retry.delays.is_empty() {
                    return (
                        Final::Delay {
                            cause,
                            after,
                            failure,
                        },
                        attempts,
                    );
                }
                let delay = next.max(after.unwrap_or(Duration::ZERO));
                info!(
                    cause = cause.as_str(),
                    error = %failure.message,
                    delay_ms = delay.as_millis() as u64,
                    "transient failure, will retry"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    // Stopping between attempts: keep the count, retry later.
                    () = target.stop.cancelled() => {
                        let next = if retry.delays.is_empty() {
                            Final::Requeue
                        } else {
                            Final::Delay { cause, after, failure }
                        };
                        return (next, attempts);
                    }
                }
            }
        }
    }
}

/// The delay queue for the job's next durable retry: the configured delay for
/// this round (the last one repeats), raised to the first that honours `floor`.
pub fn pick_delay(
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
mod tests {
    use super::*;

    #[test]
    fn delays_advance_and_the_last_repeats() {
        let d = [
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(300),
        ];
        assert_eq!(pick_delay(&d, 0, None), Some(d[0]));
        assert_eq!(pick_delay(&d, 1, None), Some(d[1]));
        assert_eq!(pick_delay(&d, 7, None), Some(d[2]));
        assert_eq!(pick_delay(&[], 0, None), None);
    }

    #[test]
    fn retry_after_raises_the_delay_to_a_queue_that_honours_it() {
        let d = [
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(300),
        ];
        assert_eq!(pick_delay(&d, 0, Some(Duration::from_secs(30))), Some(d[1]));
        assert_eq!(pick_delay(&d, 0, Some(Duration::from_secs(5))), Some(d[0]));
        // Past the longest delay: the longest there is.
        assert_eq!(
            pick_delay(&d, 0, Some(Duration::from_secs(900))),
            Some(d[2])
        );
    }

    #[test]
    fn schedule_grows_and_stays_within_jitter_bounds() {
        let retry = RetryConfig {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            ..RetryConfig::default()
        };
        let mut b = schedule(&retry);
        let first = b.next_backoff().unwrap();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(150),
            "{first:?}"
        );
        for _ in 0..10 {
            let d = b.next_backoff().unwrap();
            assert!(d <= Duration::from_millis(1500), "{d:?}");
        }
    }
}
