//! Fault tests: under crashes, broker connection loss, outages, hangs and
//! signals, no job is lost, and a job already sent is not sent again. Each
//! ends with a count of jobs lost, which must be 0.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use octopods_worker::sandbox::{Fault, Script};
use serde_json::{Value, json};

use crate::helpers::*;

/// Reads events until every job of `ids` has a `sent` one or `timeout` passes;
/// returns all events read, by job_id.
async fn collect_events(
    app: &TestApp,
    ids: &[String],
    timeout: Duration,
) -> BTreeMap<String, Vec<Value>> {
    let mut by_job: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + timeout;
    while !lost(ids, &by_job).is_empty() && std::time::Instant::now() < deadline {
        match app.try_next_event().await {
            Some(e) => by_job
                .entry(e["job_id"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(e),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    by_job
}

/// Jobs of `ids` without a `sent` event.
fn lost(ids: &[String], events: &BTreeMap<String, Vec<Value>>) -> Vec<String> {
    ids.iter()
        .filter(|id| {
            !events
                .get(*id)
                .is_some_and(|es| es.iter().any(|e| e["event"] == "sent"))
        })
        .cloned()
        .collect()
}

/// Sandbox requests per job that got a 200: more than one is a duplicate send.
fn duplicate_sends(app: &TestApp) -> usize {
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for r in app.requests().iter().filter(|r| r.status == 200) {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let key = body["waba_interactive_message"]["body"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *per_job.entry(key).or_default() += 1;
    }
    per_job.values().map(|n| n.saturating_sub(1)).sum()
}

/// A job whose message text carries its id, so sandbox requests can be told apart.
fn tagged_job(id: &str) -> Value {
    let mut j = button_job(id);
    j["waba_interactive_message"]["body"]["text"] = json!(format!("Did order {id} arrive?"));
    j
}

#[tokio::test]
async fn kill_9_mid_flight_then_restart_loses_nothing() {
    const N: usize = 200;
    let mut app = spawn_with(
        "fault-kill9",
        Options {
            sandbox_latency: Duration::from_millis(20),
            ..Options::default()
        },
    )
    .await;
    app.stop_worker().await;
    let ids: Vec<String> = (0..N).map(|i| format!("k9-{i}")).collect();
    for id in &ids {
        app.publish_job(&tagged_job(id)).await;
    }
    let mut first = BinaryWorker::start(&app.config_path).await;
    eventually(
        Duration::from_secs(30),
        "some jobs sent before the kill",
        || async { (app.requests().len() >= 60).then_some(()) },
    )
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).await;
    let sent_before_kill = app.requests().iter().filter(|r| r.status == 200).count();
    assert!(sent_before_kill < N, "the worker finished before the kill");

    let mut second = BinaryWorker::start(&app.config_path).await;
    let events = collect_events(&app, &ids, Duration::from_secs(60)).await;
    let lost = lost(&ids, &events);
    let dups = duplicate_sends(&app);
    eprintln!(
        "kill -9 after {sent_before_kill} of {N} sent: lost {}, duplicate sends {dups} (jobs in flight at the kill)",
        lost.len()
    );
    assert!(lost.is_empty(), "lost jobs: {lost:?}");
    // Only deliveries unacked at the kill can be sent twice: at most prefetch.
    assert!(dups <= 32, "{dups} duplicate sends");
    second.signal("TERM");
    assert_eq!(
        second.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn closing_the_broker_connection_while_jobs_flow_loses_and_duplicates_nothing() {
    const N: usize = 200;
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 100.0;
    channel.burst = 1;
    let app = spawn_with(
        "fault-close-conn",
        Options {
            channels: vec![channel],
            ..Options::default()
        },
    )
    .await;
    let ids: Vec<String> = (0..N).map(|i| format!("cc-{i}")).collect();
    for id in &ids {
        app.publish_job(&tagged_job(id)).await;
    }
    eventually(Duration::from_secs(10), "jobs flowing", || async {
        (app.requests().len() >= 50).then_some(())
    })
    .await;
    close_worker_connection(&app.prefix).await;
    let events = collect_events(&app, &ids, Duration::from_secs(60)).await;
    let lost = lost(&ids, &events);
    let dups = duplicate_sends(&app);
    eprintln!(
        "connection closed mid-flow: lost {}, duplicate sends {dups}",
        lost.len()
    );
    assert!(lost.is_empty(), "lost jobs: {lost:?}");
    assert_eq!(
        dups, 0,
        "the recent-job_id memory prevents re-sends after a reconnect"
    );
    assert!(app.metric("octopods_broker_reconnects_total").await >= 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_two_minute_outage_goes_through_the_delay_queues_and_all_jobs_end_sent() {
    const N: usize = 20;
    let app = spawn_with(
        "fault-outage",
        Options {
            extra_toml: "[retry]\nmax_attempts = 30\nmax_elapsed = \"6m\"\nimmediate_attempts = 2\n\
                         delays = [\"5s\", \"15s\", \"30s\"]\ninitial_interval = \"100ms\"\nmax_interval = \"1s\"\n"
                .into(),
            delivery_limit: Some(40),
            ..Options::default()
        },
    )
    .await;
    app.script(Script {
        phone: None,
        faults: vec![Fault::Outage { status: Some(503) }],
        repeat: 0,
        for_ms: Some(120_000),
    });
    let ids: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    for id in &ids {
        app.publish_job(&tagged_job(id)).await;
    }
    let events = collect_events(&app, &ids, Duration::from_secs(240)).await;
    let lost = lost(&ids, &events);
    let delayed = app.metrics().await;
    let via_30s = app
        .metric("octopods_delayed_retries_total{channel=\"store-eu\",delay=\"30s\"}")
        .await;
    eprintln!(
        "2-minute outage: lost {}, duplicate sends {}, 30s-delay hand-offs {via_30s}",
        lost.len(),
        duplicate_sends(&app)
    );
    assert!(lost.is_empty(), "lost jobs: {lost:?}\n{delayed}");
    assert!(
        via_30s >= N as f64,
        "every job went through the longest delay queue"
    );
    // 5 s + 15 s + 30 s × n covers a 2-minute outage in about 6 hand-offs per
    // job; many more would mean copies of a job multiplying in the delay queues.
    assert!(
        via_30s <= (N * 6) as f64,
        "{via_30s} hand-offs to the 30 s queue for {N} jobs"
    );
    for (id, es) in &events {
        // A second event with no second send is the dedup memory answering
        // a second copy of the job; the settle failures say where it came from.
        let failures: Vec<&str> = delayed
            .lines()
            .filter(|l| {
                l.starts_with("octopods_settle_failures_total")
                    || l.starts_with("octopods_duplicates")
            })
            .collect();
        assert_eq!(
            es.len(),
            1,
            "{id} has {} events: {es:?}\n{failures:#?}",
            es.len()
        );
    }
    assert!(
        events
            .values()
            .flatten()
            .all(|e| e["attempts"].as_u64().unwrap() > 2)
    );
    assert_eq!(duplicate_sends(&app), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_hanging_octopods_times_out_and_the_job_is_retried() {
    let app = spawn_worker("fault-hang").await;
    // The test config's request timeout is 2 s.
    app.script(Script::for_phone(PHONE, vec![Fault::Hang { ms: 5_000 }]));
    app.publish_job(&button_job("hang")).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["attempts"], 2);
    assert_eq!(
        app.metric("octopods_retries_total{cause=\"timeout\",channel=\"store-eu\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("octopods_api_requests_total{channel=\"store-eu\",status=\"error\"}")
            .await,
        1.0
    );
    eprintln!("hang past the timeout: lost 0");
    app.shutdown().await;
}

#[tokio::test]
async fn the_same_job_published_twice_is_sent_once() {
    let app = spawn_worker("fault-dup").await;
    let mut job = tagged_job("twice");
    // Metadata comes back from the redelivered job, not from the memory.
    job["metadata"] = serde_json::json!({"order_id": "1234", "nested": {"z": [1, 2], "a": null}});
    // Back to back (both in flight at once) and again after the first settled.
    app.publish_job(&job).await;
    app.publish_job(&job).await;
    let first = app.next_event().await;
    let second = app.next_event().await;
    app.publish_job(&job).await;
    let third = app.next_event().await;
    assert_eq!(first["event"], "sent");
    assert_eq!(first["metadata"], job["metadata"]);
    for e in [&second, &third] {
        assert_eq!(
            *e, first,
            "the same sent event is re-published, every field of it"
        );
    }
    assert_eq!(app.requests().len(), 1, "one request to Octopods");
    assert_eq!(
        app.metric("octopods_duplicates_suppressed_total{channel=\"store-eu\"}")
            .await,
        2.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn sigterm_with_jobs_in_flight_exits_zero_and_a_second_signal_exits_at_once() {
    const N: usize = 10;
    let mut app = spawn_with(
        "fault-sigterm",
        Options {
            sandbox_latency: Duration::from_millis(800),
            ..Options::default()
        },
    )
    .await;
    app.stop_worker().await;
    let ids: Vec<String> = (0..N).map(|i| format!("st-{i}")).collect();
    for id in &ids {
        app.publish_job(&tagged_job(id)).await;
    }
    let mut worker = BinaryWorker::start(&app.config_path).await;
    eventually(Duration::from_secs(10), "jobs in flight", || async {
        (app.requests().len() == N).then_some(())
    })
    .await;
    worker.signal("TERM");
    assert_eq!(
        worker.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    let events = collect_events(&app, &ids, Duration::from_secs(15)).await;
    let lost = lost(&ids, &events);
    eprintln!("SIGTERM with {N} in flight: lost {}", lost.len());
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(
        app.depth("jobs.store-eu").await,
        0,
        "finished jobs were acked"
    );

    // A second signal does not wait for the grace period.
    let ids: BTreeSet<String> = (0..3).map(|i| format!("st2-{i}")).collect();
    for id in &ids {
        app.publish_job(&tagged_job(id)).await;
    }
    let mut worker = BinaryWorker::start(&app.config_path).await;
    eventually(Duration::from_secs(10), "jobs in flight", || async {
        (app.requests().len() == N + 3).then_some(())
    })
    .await;
    worker.signal("TERM");
    let ready = format!("http://{}/readyz", worker.addr);
    eventually(
        Duration::from_secs(5),
        "the worker to start shutting down",
        || async { (reqwest::get(&ready).await.ok()?.status() != 200).then_some(()) },
    )
    .await;
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_millis(700)).await;
    assert_eq!(status.code(), Some(130));
    // What was in flight is redelivered, not lost.
    eventually(
        Duration::from_secs(5),
        "the 3 unfinished jobs back in their queue",
        || async { (app.depth("jobs.store-eu").await == 3).then_some(()) },
    )
    .await;
    app.shutdown().await;
}
