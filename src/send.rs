//! One job's attempts: before each, the deadlines and the channel's rate
//! limit; after each, [`classify`](crate::classify)'s verdict. Transient
//! failures back off exponentially with jitter (`backoff`), with `Retry-After`
//! as a floor, until the attempt or time budget runs out.

use std::time::Duration;

use backoff::{ExponentialBackoff, backoff::Backoff};
use time::OffsetDateTime;
use tracing::{Span, info, warn};

use crate::{
    config::{ApiKey, RetryConfig},
    job::Job,
    limit::Limiter,
    metrics::Metrics,
    octopods::Client,
    outcome::{Failure, Outcome, Reason, Receipt},
};

/// How a job's attempts ended.
#[derive(Debug)]
pub enum Final {
    Sent(Receipt),
    DeadLetter(Reason, Failure),
}

/// What the send stage needs of the channel.
pub struct Target<'a> {
    pub channel: &'a str,
    pub key: &'a ApiKey,
    pub limiter: &'a Limiter,
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

/// Attempts `job` until it is sent or must be dead-lettered. `prior` counts
/// attempts made by earlier deliveries; the returned count includes them.
pub async fn attempt(
    job: &Job,
    target: &Target<'_>,
    prior: u32,
    client: &Client,
    retry: &RetryConfig,
    metrics: &Metrics,
) -> (Final, u32) {
    let mut backoff = schedule(retry);
    backoff.reset();
    let mut attempts = prior;
    loop {
        if let Err((reason, message)) = job.check_deadlines(OffsetDateTime::now_utc()) {
            return (
                Final::DeadLetter(reason, Failure::local(message)),
                attempts.max(1),
            );
        }
        let waited = target.limiter.ready().await;
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
                let next = if attempts >= retry.max_attempts {
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
                let delay = next.max(after.unwrap_or(Duration::ZERO));
                metrics.retried(target.channel, cause);
                info!(
                    cause = cause.as_str(),
                    error = %failure.message,
                    delay_ms = delay.as_millis() as u64,
                    "transient failure, will retry"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
