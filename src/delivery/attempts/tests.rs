//! Every exit of the attempt loop, with a scripted fake sender under paused
//! time: no broker, no HTTP, no sleeping.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use serde_json::json;
use time::OffsetDateTime;
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    config::Provider, observe::health::Health, observe::metrics::Metrics, octopods::client::Attempt,
};

/// Answers from a script, one per request; counts the requests.
struct Script(Mutex<VecDeque<Outcome>>);

impl Script {
    fn new(answers: Vec<Outcome>) -> Self {
        Self(Mutex::new(answers.into()))
    }

    fn left(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Sender for Script {
    async fn send(&self, _endpoint: Endpoint, _body: bytes::Bytes, _attempt: u32) -> Attempt {
        let outcome = self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .expect("more requests than scripted");
        Attempt {
            status: None,
            outcome,
            duration: Duration::ZERO,
        }
    }
}

fn sent() -> Outcome {
    Outcome::Sent(Receipt {
        message_id: "msg_1".into(),
        channel_message_id: None,
        request_id: None,
        message_status_url: None,
        phone_number: None,
    })
}

fn unavailable() -> Outcome {
    retry_after(None)
}

fn retry_after(after: Option<Duration>) -> Outcome {
    Outcome::Retry {
        cause: RetryCause::ServerError,
        after,
        failure: Failure::local("Octopods answered 503"),
    }
}

fn job() -> Job {
    let body = json!({"job_id": "j-1", "destination_phone": "+15551234567",
                      "waba_interactive_message": crate::job::delivery_confirmation()});
    Job::parse(body.to_string().as_bytes(), "store-eu", Provider::CloudApi).unwrap()
}

fn config(immediate: u32, delays: &[u64]) -> RetryConfig {
    RetryConfig {
        max_attempts: 5,
        max_elapsed: Duration::from_secs(600),
        immediate_attempts: immediate,
        delays: delays.iter().map(|s| Duration::from_secs(*s)).collect(),
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(30),
        max_retry_after: Duration::from_secs(3600),
        paused_delay: Duration::from_secs(3 * 3600),
    }
}

struct Fixture {
    limiter: Limiter,
    open: Semaphore,
    flow: Health,
    stop: CancellationToken,
    metrics: Metrics,
}

impl Fixture {
    fn new() -> Self {
        Self {
            limiter: Limiter::new(1_000_000.0, 1000),
            open: Semaphore::new(4),
            flow: Health::new(std::sync::Arc::new(Metrics::new())),
            stop: CancellationToken::new(),
            metrics: Metrics::new(),
        }
    }

    async fn run(
        &self,
        script: &impl Sender,
        history: History,
        retry: &RetryConfig,
    ) -> (Final, u32) {
        let target = Target {
            channel: "store-eu",
            limiter: &self.limiter,
            open: &self.open,
            health: &self.flow,
            stop: &self.stop,
        };
        attempt(&job(), &target, history, script, retry, &self.metrics).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_success_is_sent_with_one_attempt() {
    let f = Fixture::new();
    let script = Script::new(vec![sent()]);
    let (result, attempts) = f.run(&script, History::default(), &config(2, &[10])).await;
    assert!(matches!(result, Final::Sent(r, _) if r.message_id == "msg_1"));
    assert_eq!(attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_dead_lettered_without_retrying() {
    let f = Fixture::new();
    let script = Script::new(vec![Outcome::DeadLetter(
        Reason::Forbidden,
        Failure::local("403"),
    )]);
    let (result, attempts) = f.run(&script, History::default(), &config(2, &[10])).await;
    assert!(matches!(result, Final::DeadLetter(Reason::Forbidden, _)));
    assert_eq!(attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_after_a_backoff_then_sent() {
    let f = Fixture::new();
    let script = Script::new(vec![unavailable(), sent()]);
    let started = Instant::now();
    let (result, attempts) = f.run(&script, History::default(), &config(3, &[10])).await;
    assert!(matches!(result, Final::Sent(..)));
    assert_eq!(attempts, 2);
    // 100 ms ± 50 % jitter.
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_immediate_attempts_the_job_goes_to_a_delay_queue() {
    let f = Fixture::new();
    let script = Script::new(vec![unavailable(), unavailable()]);
    let (result, attempts) = f.run(&script, History::default(), &config(2, &[10])).await;
    assert!(matches!(
        result,
        Final::Delay(Later {
            cause: RetryCause::ServerError,
            ..
        })
    ));
    assert_eq!(attempts, 2);
    assert_eq!(script.left(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_spent_by_attempts_counted_across_deliveries() {
    let f = Fixture::new();
    let script = Script::new(vec![unavailable()]);
    let earlier = History {
        attempts: 4,
        delayed: 2,
        first_attempt_at: Some(OffsetDateTime::now_utc()),
        template: false,
    };
    let (result, attempts) = f.run(&script, earlier, &config(2, &[10])).await;
    let Final::DeadLetter(Reason::RetriesExhausted, failure) = result else {
        panic!("{result:?}")
    };
    assert_eq!(attempts, 5);
    assert!(
        failure.message.starts_with("5 attempts: "),
        "{}",
        failure.message
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_spent_by_time_since_the_first_attempt() {
    let f = Fixture::new();
    let script = Script::new(vec![unavailable()]);
    let earlier = History {
        attempts: 1,
        delayed: 1,
        first_attempt_at: Some(OffsetDateTime::now_utc() - time::Duration::minutes(11)),
        template: false,
    };
    let (result, attempts) = f.run(&script, earlier, &config(2, &[10])).await;
    assert!(
        matches!(result, Final::DeadLetter(Reason::RetriesExhausted, _)),
        "{result:?}"
    );
    assert_eq!(attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_history_at_the_integer_edge_cannot_overflow() {
    let f = Fixture::new();
    let script = Script::new(vec![unavailable()]);
    let earlier = History {
        attempts: u32::MAX,
        delayed: u32::MAX,
        first_attempt_at: Some(OffsetDateTime::now_utc() + time::Duration::days(365 * 100)),
        template: false,
    };
    let (result, attempts) = f.run(&script, earlier, &config(2, &[10])).await;
    assert!(matches!(
        result,
        Final::DeadLetter(Reason::RetriesExhausted, _)
    ));
    assert_eq!(attempts, u32::MAX);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_floor_on_the_in_process_wait() {
    let f = Fixture::new();
    let script = Script::new(vec![retry_after(Some(Duration::from_secs(3))), sent()]);
    let started = Instant::now();
    let (result, _) = f.run(&script, History::default(), &config(3, &[10])).await;
    assert!(matches!(result, Final::Sent(..)));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_moves_the_job_to_a_delay_queue_at_once_capped() {
    let f = Fixture::new();
    let script = Script::new(vec![retry_after(Some(Duration::from_secs(10 * 3600)))]);
    let started = Instant::now();
    let (result, attempts) = f
        .run(&script, History::default(), &config(3, &[10, 3600]))
        .await;
    let Final::Delay(Later { after, .. }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(
        after,
        Some(Duration::from_secs(3600)),
        "capped at max_retry_after"
    );
    assert_eq!(attempts, 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the delivery was not held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_waiting_between_attempts_keeps_the_count() {
    let f = Fixture::new();
    let script = Script::new(vec![retry_after(Some(Duration::from_secs(20)))]);
    let stop = f.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    });
    let (result, attempts) = f.run(&script, History::default(), &config(3, &[10])).await;
    assert!(matches!(result, Final::Delay(_)), "{result:?}");
    assert_eq!(attempts, 1);
    // Without delay queues it goes back to its own queue.
    let f = Fixture::new();
    f.stop.cancel();
    let script = Script::new(vec![]);
    let (result, attempts) = f.run(&script, History::default(), &config(3, &[])).await;
    assert!(matches!(result, Final::HandBack));
    assert_eq!(attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_wins_over_a_ready_rate_slot() {
    let f = Fixture::new();
    f.stop.cancel();
    let script = Script::new(vec![]);
    let (result, attempts) = f.run(&script, History::default(), &config(2, &[10])).await;
    assert!(matches!(result, Final::HandBack));
    assert_eq!(attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn no_request_while_the_broker_blocks_publishing() {
    let f = Fixture::new();
    f.flow.broker_blocked(true);
    let script = Script::new(vec![sent()]);
    let retry = config(2, &[10]);
    let run = f.run(&script, History::default(), &retry);
    tokio::pin!(run);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut run)
            .await
            .is_err()
    );
    assert_eq!(script.left(), 1, "no request while blocked");
    f.flow.broker_blocked(false);
    let (result, _) = run.await;
    assert!(matches!(result, Final::Sent(..)));
}

/// Accepts every request; notes when each came.
#[derive(Default)]
struct Clocked(Mutex<Vec<Instant>>);

impl Sender for Clocked {
    async fn send(&self, _endpoint: Endpoint, _body: bytes::Bytes, _attempt: u32) -> Attempt {
        self.0.lock().unwrap().push(Instant::now());
        Attempt {
            status: None,
            outcome: sent(),
            duration: Duration::ZERO,
        }
    }
}

/// Real time: governor keeps its own clock, not tokio's paused one.
#[tokio::test]
async fn slots_that_came_while_the_broker_blocked_are_not_spent_at_once_after() {
    let mut f = Fixture::new();
    f.limiter = Limiter::new(20.0, 1);
    let clock = Clocked::default();
    let retry = config(2, &[10]);
    let runs =
        futures_util::future::join_all((0..5).map(|_| f.run(&clock, History::default(), &retry)));
    tokio::pin!(runs);
    // The first job takes the burst; four wait for their slots (one per 50 ms)...
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut runs)
            .await
            .is_err()
    );
    assert_eq!(clock.0.lock().unwrap().len(), 1);
    // ...while the broker blocks for longer than all four slots take.
    f.flow.broker_blocked(true);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut runs)
            .await
            .is_err()
    );
    assert_eq!(clock.0.lock().unwrap().len(), 1, "no request while blocked");
    f.flow.broker_blocked(false);
    for (result, _) in runs.await {
        assert!(matches!(result, Final::Sent(..)));
    }
    let at = clock.0.lock().unwrap().clone();
    // Four requests after the block at 20/s take at least three intervals.
    let span = at[4] - at[1];
    assert!(
        span >= Duration::from_millis(120),
        "4 requests within {span:?} after the block: slots from the blocked time were spent at once"
    );
}

#[tokio::test(start_paused = true)]
async fn no_request_without_a_permit() {
    let f = Fixture::new();
    let held = f.open.acquire_many(4).await.unwrap();
    let script = Script::new(vec![sent()]);
    let retry = config(2, &[10]);
    let run = f.run(&script, History::default(), &retry);
    tokio::pin!(run);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut run)
            .await
            .is_err()
    );
    assert_eq!(script.left(), 1);
    drop(held);
    assert!(matches!(run.await.0, Final::Sent(..)));
}

#[tokio::test(start_paused = true)]
async fn an_expired_job_is_dead_lettered_before_any_request() {
    let f = Fixture::new();
    let body = json!({"job_id": "j", "destination_phone": "+15551234567",
        "waba_interactive_message": crate::job::delivery_confirmation(),
        "expires_at": "2000-01-01T00:00:00Z"});
    let job = Job::parse(body.to_string().as_bytes(), "store-eu", Provider::CloudApi).unwrap();
    let script = Script::new(vec![]);
    let target = Target {
        channel: "store-eu",
        limiter: &f.limiter,
        open: &f.open,
        health: &f.flow,
        stop: &f.stop,
    };
    let (result, attempts) = attempt(
        &job,
        &target,
        History::default(),
        &script,
        &config(2, &[10]),
        &f.metrics,
    )
    .await;
    assert!(matches!(result, Final::DeadLetter(Reason::Expired, _)));
    assert_eq!(attempts, 1);
}
