//! Operators steer channels at run time (docs/contract.md §13): pause, resume and a
//! new rate reach every replica through RabbitMQ alone, within 2 s, and
//! survive restarts.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

fn two_channels() -> Options {
    let mut eu = TestChannel::new("store-eu");
    eu.rate = 5.0;
    eu.burst = 1;
    Options {
        channels: vec![eu, TestChannel::new("store-us")],
        spread_window: Duration::from_millis(300),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_pause_reaches_every_replica_and_leaves_the_jobs_in_their_queue() {
    let mut app = spawn_with("control-pause", two_channels()).await;
    app.stop_worker().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(BinaryWorker::start(&app.config_path).await);
    }
    let paused = "octopods_channel_paused{channel=\"store-eu\"}";
    let out = app
        .cli(&[
            "channel",
            "pause",
            "store-eu",
            "--reason",
            "number suspended",
        ])
        .await;
    assert!(ok(&out).contains("store-eu: paused on every replica"));
    let asked = Instant::now();
    for r in &replicas {
        eventually(
            Duration::from_secs(2),
            "every replica to pause store-eu",
            || async { (metric_at(&r.addr, paused).await? == 1.0).then_some(()) },
        )
        .await;
    }
    eprintln!("pause reached 3 replicas in {:?}", asked.elapsed());
    let eu_key = "key-store-eu-s3cret";
    let before = requests_with_key(&app, eu_key).len();
    app.publish_many("store-eu", (0..10).map(|i| button_job(&format!("eu-{i}"))))
        .await;
    let us: Vec<Value> = (0..5)
        .map(|i| {
            let mut j = button_job(&format!("us-{i}"));
            j["channel"] = "store-us".into();
            j
        })
        .collect();
    app.publish_many("store-us", us).await;
    for _ in 0..5 {
        assert_eq!(
            app.next_event().await["channel"],
            "store-us",
            "only the other channel flows"
        );
    }
    // A replica started while paused stays paused.
    let late = BinaryWorker::start(&app.config_path).await;
    assert_eq!(metric_at(&late.addr, paused).await, Some(1.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        requests_with_key(&app, eu_key).len(),
        before,
        "no request for a paused channel"
    );
    assert_eq!(
        app.depth("jobs.store-eu").await,
        10,
        "its jobs wait ready in the queue"
    );
    let status: Vec<Value> = ok(&app.cli(&["channel", "status", "--json"]).await)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let eu = status.iter().find(|s| s["channel"] == "store-eu").unwrap();
    assert_eq!(eu["state"], "paused", "{eu}");
    assert_eq!(eu["paused_reason"], "number suspended");
    assert_eq!(eu["ready"], 10);
    assert_eq!(
        eu["consumers"], 0,
        "no replica holds a paused channel's queue"
    );
    let us = status.iter().find(|s| s["channel"] == "store-us").unwrap();
    assert_eq!(us["state"], "running");

    // Resume: the backlog drains at the configured rate (5/s, burst 1).
    ok(&app.cli(&["channel", "resume", "store-eu"]).await);
    for _ in 0..10 {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    let at = requests_with_key(&app, eu_key);
    let at = &at[before..];
    assert_eq!(at.len(), 10);
    assert_budget(at, 5.0, 1, Duration::from_secs(1));
    drop(late);
    drop(replicas);
    app.shutdown().await;
}

#[tokio::test]
async fn a_new_rate_applies_within_two_seconds_and_survives_a_restart() {
    let mut app = spawn_with("control-rate", two_channels()).await;
    let budget = "octopods_channel_rate_budget{channel=\"store-eu\"}";
    assert_eq!(app.metric(budget).await, 5.0);
    let out = app.cli(&["channel", "set-rate", "store-eu", "20"]).await;
    assert!(ok(&out).contains("store-eu: rate 20/s on every replica"));
    eventually(Duration::from_secs(2), "the new rate in force", || async {
        (app.metric(budget).await == 20.0).then_some(())
    })
    .await;
    let n = 60;
    app.publish_many("store-eu", (0..n).map(|i| button_job(&format!("fast-{i}"))))
        .await;
    for _ in 0..n {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    let at = requests_with_key(&app, "key-store-eu-s3cret");
    assert_budget(&at, 20.0, 1, Duration::from_secs(1));
    let rate = achieved_rate(&at);
    eprintln!("set-rate 20: achieved {rate:.1}/s");
    assert!(rate > 15.0, "the new rate is used: {rate:.1}/s");

    // A restarted worker keeps the override; clear undoes it.
    app.stop_worker().await;
    app.start_worker().await;
    assert_eq!(app.metric(budget).await, 20.0);
    ok(&app.cli(&["channel", "clear", "store-eu"]).await);
    eventually(
        Duration::from_secs(2),
        "the configured rate back",
        || async { (app.metric(budget).await == 5.0).then_some(()) },
    )
    .await;
    // Operator mistakes are named.
    let out = app.cli(&["channel", "pause", "store-xx"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown channel \"store-xx\"; configured: store-eu, store-us"),
        "{err}"
    );
    let out = app.cli(&["channel", "set-rate", "store-eu", "0"]).await;
    assert!(!out.status.success());
    app.shutdown().await;
}

/// A consumer runs at most twice the request permits as tasks; the rest of
/// its prefetch waits in the consumer's buffer. A pause must hand back both:
/// the jobs waiting for their turn and those never started.
#[tokio::test]
async fn a_pause_returns_started_and_buffered_jobs_alike() {
    const N: usize = 30;
    let mut eu = TestChannel::new("store-eu");
    eu.rate = 2.0;
    eu.burst = 1;
    let app = spawn_with(
        "control-pause-buffered",
        Options {
            channels: vec![eu],
            // Two permits: 18 tasks; the other 14 of the 32 prefetched
            // deliveries wait in the buffer.
            max_concurrent_requests: Some(2),
            ..Options::default()
        },
    )
    .await;
    app.publish_many("store-eu", (0..N).map(|i| button_job(&format!("pb-{i}"))))
        .await;
    let first = app.next_event().await;
    assert_eq!(first["event"], "sent");
    let first = first["job_id"].as_str().unwrap().to_owned();
    ok(&app
        .cli(&["channel", "pause", "store-eu", "--reason", "test"])
        .await);
    let sent_before = eventually(
        Duration::from_secs(10),
        "every unsent job back in the queue, ready",
        || async {
            let sent = app.requests().len();
            (app.depth("jobs.store-eu").await as usize + sent == N).then_some(sent)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.requests().len(), sent_before, "no request while paused");
    assert_eq!(app.depth("jobs.store-eu").await as usize, N - sent_before);
    ok(&app.cli(&["channel", "resume", "store-eu"]).await);
    let mut ids = std::collections::BTreeSet::from([first]);
    while ids.len() < N {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent");
        ids.insert(e["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.requests().len(), N, "each job sent once");
    app.shutdown().await;
}

/// A record is input wherever it is applied. Written straight to the stream
/// (past the CLI's checks), a rate whose quota arithmetic overflowed inside
/// governor took every replica down, and every replica started later too,
/// since each folds the stream from its first record. Now each such record
/// is skipped, counted and logged, and the replica keeps serving.
#[tokio::test]
async fn records_out_of_range_or_unreadable_are_skipped_and_the_replica_serves_on() {
    let mut app = spawn_with("control-hostile", two_channels()).await;
    let budget = "octopods_channel_rate_budget{channel=\"store-eu\"}";
    let at = "2026-12-02T00:00:00Z";
    let records: Vec<Vec<u8>> = vec![
        format!(
            r#"{{"channel":"store-eu","op":"set_rate","rate":0.01,"burst":4000000000,"at":"{at}"}}"#
        )
        .into_bytes(),
        format!(r#"{{"channel":"store-eu","op":"set_rate","rate":1e308,"at":"{at}"}}"#)
            .into_bytes(),
        format!(r#"{{"channel":"store-eu","op":"set_rate","rate":-3,"at":"{at}"}}"#).into_bytes(),
        format!(
            r#"{{"channel":"store-eu","op":"pause","reason":"{}","at":"{at}"}}"#,
            "x".repeat(5000)
        )
        .into_bytes(),
        b"\xff\x00 not json \x1b[31m".to_vec(),
        vec![b' '; 100_000],
    ];
    for r in &records {
        app.append_control(r).await;
    }
    // A good record after them is still applied: the replica is alive.
    ok(&app.cli(&["channel", "set-rate", "store-eu", "7"]).await);
    eventually(
        Duration::from_secs(5),
        "the good record applied",
        || async { (app.metric(budget).await == 7.0).then_some(()) },
    )
    .await;
    let rejected = |r: &'static str| format!("octopods_control_rejected_total{{reason=\"{r}\"}}");
    assert_eq!(app.metric(&rejected("out_of_range")).await, 4.0);
    assert_eq!(app.metric(&rejected("unreadable")).await, 2.0);
    app.publish_job(&button_job("after-bad-records")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    // A replica started later folds the same log and starts.
    app.stop_worker().await;
    app.start_worker().await;
    assert_eq!(app.metric(budget).await, 7.0);
    assert_eq!(app.metric(&rejected("out_of_range")).await, 4.0);
    // `channel status` reads the same log and does not fail either.
    let status = ok(&app.cli(&["channel", "status", "--json"]).await);
    assert!(status.contains("\"store-eu\""), "{status}");
    // The CLI refuses the same values, naming the value and the limit.
    let out = app
        .cli(&[
            "channel",
            "set-rate",
            "store-eu",
            "0.01",
            "--burst",
            "4000000000",
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("burst 4000000000: must be from 1 to 100000"),
        "{err}"
    );
    let out = app
        .cli(&["channel", "set-rate", "store-eu", "2000000"])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rate 2000000: must be from 0.001 to 1000000 per second"),
        "{err}"
    );
    app.shutdown().await;
}

fn panic_on_boom(id: &str) {
    if id == "control:boom" {
        panic!("a deliberately panicking control record");
    }
}

/// A panic while a record is applied (here a deliberate one; in life a
/// dependency's API on a value nobody checked) is caught at that boundary:
/// the record is skipped and counted, and the replica keeps serving.
#[tokio::test]
async fn a_record_that_panics_is_skipped_and_the_replica_serves_on() {
    let mut app = spawn_with(
        "control-panic",
        Options {
            fault: Some(panic_on_boom),
            ..two_channels()
        },
    )
    .await;
    app.append_control(br#"{"channel":"boom","op":"resume","at":"t"}"#)
        .await;
    ok(&app.cli(&["channel", "set-rate", "store-eu", "9"]).await);
    let budget = "octopods_channel_rate_budget{channel=\"store-eu\"}";
    eventually(
        Duration::from_secs(5),
        "the next record applied",
        || async { (app.metric(budget).await == 9.0).then_some(()) },
    )
    .await;
    assert_eq!(
        app.metric("octopods_control_rejected_total{reason=\"panicked\"}")
            .await,
        1.0
    );
    app.publish_job(&button_job("after-panic")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    // Restarting folds the panicking record again: still up.
    app.stop_worker().await;
    app.start_worker().await;
    assert_eq!(app.metric(budget).await, 9.0);
    app.shutdown().await;
}

/// A job handed back unattempted keeps its delivery budget. Every pause
/// hands back the jobs waiting for their rate slot; a quorum queue counts
/// each nack-requeue toward `x-delivery-limit` (20), so 22 pause/resume
/// cycles once dead-lettered all five as `poison` with no request made.
#[tokio::test]
async fn a_hundred_pauses_spend_no_job() {
    const N: u32 = 5;
    let mut eu = TestChannel::new("store-eu");
    // Each resume starts an empty budget: no send within a cycle.
    eu.rate = 0.25;
    eu.burst = 1;
    let app = spawn_with(
        "control-pause-cycles",
        Options {
            channels: vec![eu],
            ..Options::default()
        },
    )
    .await;
    app.publish_many("store-eu", (0..N).map(|i| button_job(&format!("cy-{i}"))))
        .await;
    let paused = "octopods_channel_paused{channel=\"store-eu\"}";
    let record = |op: &str| format!(r#"{{"channel":"store-eu","op":"{op}","at":"t","by":"test"}}"#);
    for cycle in 0..100 {
        eventually(
            Duration::from_secs(10),
            "the jobs held by the consumer",
            || async { (app.depth("jobs.store-eu").await == 0).then_some(()) },
        )
        .await;
        app.append_control(record("pause").as_bytes()).await;
        eventually(
            Duration::from_secs(10),
            "the jobs back in the queue",
            || async {
                let back = app.metric(paused).await == 1.0
                    && app.depth("jobs.store-eu").await + app.requests().len() as u32 == N;
                back.then_some(())
            },
        )
        .await;
        app.append_control(record("resume").as_bytes()).await;
        assert_eq!(
            app.depth("dead").await,
            0,
            "cycle {cycle}: a job was dead-lettered"
        );
    }
    let mut sent = std::collections::BTreeSet::new();
    while sent.len() < N as usize {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.insert(e["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        app.requests().len(),
        N as usize,
        "each job sent exactly once"
    );
    assert_eq!(app.depth("dead").await, 0);
    assert_eq!(
        app.metric("octopods_dead_lettered_total{channel=\"store-eu\",reason=\"poison\"}")
            .await,
        0.0
    );
    app.shutdown().await;
}

/// A shop publishing as its own RabbitMQ user may set `user_id` (RabbitMQ
/// checks it against the publishing connection). The worker hands such a
/// job back under its own user, so the copy must not carry the shop's
/// `user_id`: RabbitMQ would refuse it and close the worker's publishing
/// channel, and every hand-back of the job would fall back to a counted nack.
#[tokio::test]
async fn a_job_published_with_the_shops_user_id_is_handed_back_as_a_copy() {
    let mut eu = TestChannel::new("store-eu");
    eu.rate = 0.2;
    eu.burst = 1;
    let app = spawn_with(
        "control-user-id",
        Options {
            channels: vec![eu],
            ..Options::default()
        },
    )
    .await;
    let user = unique_prefix("shop");
    rabbitmqctl(&["add_user", &user, "pw"]).await;
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    let shop_url = amqp_url().replacen("guest:guest@", &format!("{user}:pw@"), 1);
    let shop = lapin::Connection::connect(&shop_url, lapin::ConnectionProperties::default())
        .await
        .expect("the shop's user connects");
    let ch = shop.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let body = serde_json::to_vec(&button_job("as-the-shop")).unwrap();
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(user.as_str().into());
    publish_confirmed(&ch, &app.queue("jobs"), "store-eu", &body, props).await;
    // The worker holds it, waiting for its slot (the budget starts empty).
    eventually(
        Duration::from_secs(5),
        "the worker to hold the job",
        || async { (app.depth("jobs.store-eu").await == 0).then_some(()) },
    )
    .await;
    app.append_control(br#"{"channel":"store-eu","op":"pause","at":"t","by":"test"}"#)
        .await;
    eventually(
        Duration::from_secs(5),
        "the job back in its queue",
        || async { (app.depth("jobs.store-eu").await == 1).then_some(()) },
    )
    .await;
    let back = app.peek_all("jobs.store-eu").await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, body, "the job's bytes, untouched");
    assert_eq!(
        back[0].int("x-delivery-count"),
        None,
        "handed back as a fresh copy, not a counted nack"
    );
    assert_eq!(back[0].properties.user_id(), &None);
    assert_eq!(app.metric("octopods_broker_reconnects_total").await, 0.0);
    app.append_control(br#"{"channel":"store-eu","op":"resume","at":"t","by":"test"}"#)
        .await;
    assert_eq!(app.next_event().await["event"], "sent");
    drop(shop.close(200, "OK".into()).await);
    rabbitmqctl(&["delete_user", &user]).await;
    app.shutdown().await;
}
