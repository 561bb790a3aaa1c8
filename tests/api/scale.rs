//! Scale and fairness: the per-channel budget holds across replicas, one
//! channel's backlog never delays another, recipients can be paced.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_budget_holds_across_three_replicas() {
    const N: usize = 60;
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 10.0;
    channel.burst = 2;
    let mut app = spawn_with(
        "scale-replicas",
        Options {
            channels: vec![channel],
            spread_window: Duration::from_millis(500),
            ..Options::default()
        },
    )
    .await;
    app.stop_worker().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(BinaryWorker::start(&app.config_path).await);
    }
    let started = Instant::now();
    app.publish_many("store-eu", (0..N).map(|i| button_job(&format!("r-{i}"))))
        .await;
    for _ in 0..N {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    let took = started.elapsed();
    let mut at: Vec<u64> = app.requests().iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    assert_eq!(at.len(), N);
    for window in [1, 2, 3] {
        assert_budget(&at, 10.0, 2, Duration::from_secs(window));
    }
    let rate = (N - 1) as f64 / ((at[N - 1] - at[0]) as f64 / 1000.0);
    eprintln!("3 replicas, budget 10/s burst 2: {N} jobs in {took:.2?}, achieved {rate:.2}/s");
    assert!(
        rate <= 10.0 * 1.02 + 0.5,
        "achieved {rate}/s over a 10/s budget"
    );
    assert!(rate >= 9.0, "achieved only {rate}/s of a 10/s budget");
    for mut r in replicas {
        r.signal("TERM");
        assert_eq!(r.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn when_the_active_replica_dies_another_takes_over() {
    const N: usize = 40;
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 20.0;
    channel.burst = 1;
    let mut app = spawn_with(
        "scale-failover",
        Options {
            channels: vec![channel],
            ..Options::default()
        },
    )
    .await;
    app.stop_worker().await;
    let first = BinaryWorker::start(&app.config_path).await;
    let second = BinaryWorker::start(&app.config_path).await;
    app.publish_many("store-eu", (0..N).map(|i| button_job(&format!("fo-{i}"))))
        .await;
    eventually(Duration::from_secs(10), "sending under way", || async {
        (app.requests().len() >= 10).then_some(())
    })
    .await;
    // The first to subscribe is the active consumer: kill it.
    let mut first = first;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).await;
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < N {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent");
        ids.insert(e["job_id"].as_str().unwrap().to_owned());
    }
    let mut at: Vec<u64> = app.requests().iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    let gap = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "failover: {N} of {N} sent after the active replica was killed (kill -9), {} requests, longest pause {gap} ms",
        at.len()
    );
    drop(second);
    app.shutdown().await;
}

#[tokio::test]
async fn a_backlogged_channel_does_not_delay_another() {
    let mut slow = TestChannel::new("store-slow");
    slow.rate = 5.0;
    slow.burst = 1;
    let mut fast = TestChannel::new("store-fast");
    fast.rate = 50.0;
    fast.burst = 1;
    let app = spawn_with(
        "scale-fairness",
        Options {
            channels: vec![slow, fast],
            ..Options::default()
        },
    )
    .await;
    app.publish_many(
        "store-slow",
        (0..5000).map(|i| button_job(&format!("slow-{i}"))),
    )
    .await;
    let started = Instant::now();
    app.publish_many(
        "store-fast",
        (0..50).map(|i| button_job(&format!("fast-{i}"))),
    )
    .await;
    let mut fast_sent = 0;
    while fast_sent < 50 {
        let e = app.next_event().await;
        if e["channel"] == "store-fast" {
            assert_eq!(e["event"], "sent");
            fast_sent += 1;
        }
    }
    let took = started.elapsed();
    eprintln!(
        "fairness: 50 jobs of store-fast (50/s) sent in {took:.2?} behind 5000 backlogged on store-slow (5/s)"
    );
    assert!(
        took <= Duration::from_secs(2),
        "store-fast took {took:?} behind store-slow's backlog"
    );
    assert!(
        app.depth("jobs.store-slow").await > 4000,
        "the slow channel is still backlogged"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn recipient_pacing_spaces_messages_to_the_same_phone() {
    let mut channel = TestChannel::new("store-eu");
    channel.recipient_interval = Some("1s");
    let app = spawn_with(
        "scale-pacing",
        Options {
            channels: vec![channel],
            ..Options::default()
        },
    )
    .await;
    let other = "+15550009999";
    for i in 0..3 {
        app.publish_job(&button_job(&format!("same-{i}"))).await;
    }
    let mut j = button_job("other");
    j["destination_phone"] = json!(other);
    app.publish_job(&j).await;
    for _ in 0..4 {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    let same: Vec<u64> = app.requests_for(PHONE).iter().map(|r| r.at_ms).collect();
    assert_eq!(same.len(), 3);
    for pair in same.windows(2) {
        assert!(
            pair[1] - pair[0] >= 950,
            "same recipient {} ms apart",
            pair[1] - pair[0]
        );
    }
    let other_at = app.requests_for(other)[0].at_ms;
    assert!(
        other_at < same[1],
        "another recipient is not held back by the first one's pacing"
    );
    app.shutdown().await;
}

/// docs/contract.md §8, one channel never blocks another — with backlogs at least
/// as deep as the prefetch, itself above `max_concurrent_requests`. A
/// channel slowed to 1/s used to hold every request permit while its jobs
/// waited for their rate slots (permit before slot), so the others crawled
/// at its pace. Now only one job per channel waits holding a permit.
#[tokio::test]
async fn a_channel_slowed_to_one_per_second_holds_back_no_other_channel() {
    slow_channel_holds_back_none("scale-fair-permits", 1.0, 40).await;
}

/// docs/contract.md §16: a channel slowed to 0.1/s with a 1,000-job backlog
/// holds back no other channel.
#[tokio::test]
async fn a_channel_at_a_tenth_per_second_with_a_thousand_queued_holds_back_no_other() {
    slow_channel_holds_back_none("scale-fair-backlog", 0.1, 1000).await;
}

/// A slow channel (`rate`, `backlog` jobs queued first) beside two at
/// 20/s, prefetch above the request permits: each fast channel gets ≥ 90 %
/// of its rate, and every channel keeps its budget in every window.
async fn slow_channel_holds_back_none(test: &str, rate: f64, backlog: usize) {
    let mut slow = TestChannel::new("store-slow");
    slow.rate = rate;
    slow.burst = 1;
    let mut fast = Vec::new();
    for name in ["store-a", "store-b"] {
        let mut c = TestChannel::new(name);
        c.rate = 20.0;
        c.burst = 1;
        fast.push(c);
    }
    let app = spawn_with(
        test,
        Options {
            channels: [vec![slow], fast.clone()].concat(),
            // prefetch 32 ≥ 8 permits; every backlog ≥ the prefetch.
            max_concurrent_requests: Some(8),
            ..Options::default()
        },
    )
    .await;
    app.publish_many(
        "store-slow",
        (0..backlog).map(|i| {
            let mut j = button_job(&format!("slow-{i}"));
            j["channel"] = "store-slow".into();
            j
        }),
    )
    .await;
    // The slow channel's prefetch is taken: its tasks wait for their slots
    // (a new active consumer's budget starts empty: the first send of a
    // 0.1/s channel is 10 s away).
    eventually(
        Duration::from_secs(5),
        "the slow channel's prefetch taken",
        || async { ((app.depth("jobs.store-slow").await as usize) < backlog).then_some(()) },
    )
    .await;
    const N: usize = 60;
    for c in &fast {
        let name = c.name.clone();
        app.publish_many(
            &c.name,
            (0..N).map(|i| {
                let mut j = button_job(&format!("{name}-{i}"));
                j["channel"] = name.clone().into();
                j
            }),
        )
        .await;
    }
    eventually(
        Duration::from_secs(20),
        "both fast backlogs sent",
        || async {
            let done = fast
                .iter()
                .all(|c| requests_with_key(&app, &c.key).len() >= N);
            done.then_some(())
        },
    )
    .await;
    for c in &fast {
        let at = requests_with_key(&app, &c.key);
        let achieved = achieved_rate(&at);
        eprintln!(
            "{}: {achieved:.1}/s of 20/s beside a {rate}/s channel with {backlog} queued",
            c.name
        );
        assert!(
            achieved >= 18.0,
            "{}: {achieved:.1}/s, under 90 % of 20/s",
            c.name
        );
        for window in [1, 2, 3] {
            assert_budget(&at, 20.0, 1, Duration::from_secs(window));
        }
    }
    let slow_at = requests_with_key(&app, "key-store-slow-s3cret");
    let window = Duration::from_secs_f64((1.0 / rate).max(1.0));
    for n in [1, 2, 3] {
        assert_budget(&slow_at, rate, 1, window * n);
    }
    app.shutdown().await;
}

/// 100 channels on a connection allowed 16 AMQP channels: consumers share
/// AMQP channels (one each capped a worker near RabbitMQ's `channel_max`,
/// 2,047: issue 38). Fails if that ceiling comes back. (Not more channels:
/// a RabbitMQ 3.x started from a shell with 1,024 open files stalls every
/// new connection past ~300 quorum queues, and the suite runs in parallel.)
#[tokio::test]
async fn a_hundred_channels_fit_a_connection_of_16_amqp_channels() {
    const N: usize = 100;
    let channels: Vec<TestChannel> = (0..N)
        .map(|i| TestChannel::new(&format!("shop-{i:03}")))
        .collect();
    let app = spawn_with(
        "scale-100",
        Options {
            channels,
            broker_query: Some("channel_max=16".into()),
            ..Options::default()
        },
    )
    .await;
    for i in 0..N {
        let mut job = button_job(&format!("j-{i}"));
        job["destination_phone"] = format!("+1555100{i:04}").into();
        let body = serde_json::to_vec(&job).expect("json");
        app.publish_bytes(&format!("shop-{i:03}"), &body, Default::default())
            .await;
    }
    let mut sent = std::collections::BTreeSet::new();
    while sent.len() < N {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.insert(e["channel"].as_str().expect("channel").to_owned());
    }
    app.shutdown().await;
}

/// A broker limit met is said, with what to raise, on `/readyz`.
#[tokio::test]
async fn a_channel_max_too_small_is_said_on_readyz_with_what_to_raise() {
    let channels: Vec<TestChannel> = (0..20)
        .map(|i| TestChannel::new(&format!("tight-{i:03}")))
        .collect();
    let opts = Options {
        channels,
        broker_query: Some("channel_max=6".into()),
        ..Options::default()
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix("scale-tight");
    let text = config_text(&prefix, "http://127.0.0.1:9", &opts, keys.path());
    let config = octopods_worker::config::Config::from_toml(&text).expect("config");
    let worker = octopods_worker::worker::Worker::build(config.clone())
        .await
        .expect("builds");
    let addr = worker.http_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    let said = eventually(
        Duration::from_secs(30),
        "/readyz naming the limit",
        || async {
            let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
            let status = r.status().as_u16();
            let text = r.text().await.ok()?;
            (status == 503 && text.contains("channel_max")).then_some(text)
        },
    )
    .await;
    assert!(said.contains("raise `channel_max`"), "{said}");
    stop.cancel();
    drop(run.await);
    let conn = broker().await;
    octopods_worker::broker::topology::delete(&conn, &config)
        .await
        .expect("delete");
}
