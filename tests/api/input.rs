//! The worker tried as a careless or hostile producer, a strange broker
//! state and a tired operator would: every delivery still settles, nothing
//! is lost, nothing panics, and what crosses in cannot forge what goes out.

use std::{io::Write, time::Duration};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;

use octopods_worker::sandbox::{Fault, Script};

use crate::helpers::*;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn invalid_job(id: &str) -> serde_json::Value {
    let mut j = button_job(id);
    j["waba_interactive_message"]["action"]["buttons"] = json!([]);
    j
}

/// Point 1: the contract allows 200 characters in any script; 200 four-byte
/// characters do not fit an AMQP short string (the correlation id).
#[tokio::test]
async fn a_job_id_of_200_four_byte_characters_is_sent() {
    let app = spawn_worker("hostile-long-id").await;
    let id = "𝄞".repeat(200);
    app.publish_job(&button_job(&id)).await;
    let (event, props, _) = app.next_event_with_props().await;
    assert_eq!(event["event"], "sent", "{event}");
    assert_eq!(event["job_id"], json!(id));
    assert_eq!(
        *props.correlation_id(),
        None,
        "800 bytes cannot be a correlation id"
    );
    // The same id, invalid: dead-lettered with its id in the event.
    app.publish_job(&invalid_job(&id)).await;
    let event = app.next_event().await;
    assert_eq!(event["reason"], "validation", "{event}");
    assert_eq!(event["job_id"], json!(id));
    assert_eq!(
        app.next_dead_letter()
            .await
            .text("x-octopods-reason")
            .as_deref(),
        Some("validation")
    );
    app.shutdown().await;
}

fn panic_on_marked_jobs(job_id: &str) {
    if job_id.starts_with("panic-") {
        panic!("injected fault for {job_id}");
    }
}

/// Point 2: a task that panics still settles: back to the queue with a
/// pause, then dead-lettered `internal` with the panic message.
#[tokio::test]
async fn a_panicking_job_is_dead_lettered_internal_and_never_left_unacked() {
    let app = spawn_with(
        "hostile-panic",
        Options {
            fault: Some(panic_on_marked_jobs),
            ..Options::default()
        },
    )
    .await;
    app.publish_job(&button_job("panic-1")).await;
    app.publish_job(&button_job("fine-1")).await;
    let mut events = Vec::new();
    for _ in 0..2 {
        events.push(app.next_event().await);
    }
    let dead = events
        .iter()
        .find(|e| e["job_id"] == "panic-1")
        .expect("panic-1 settled");
    assert_eq!(dead["event"], "dead_lettered", "{dead}");
    assert_eq!(dead["reason"], "internal");
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("injected fault for panic-1"),
        "{dead}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["job_id"] == "fine-1" && e["event"] == "sent")
    );
    assert_eq!(
        app.metric("octopods_panics_total{channel=\"store-eu\"}")
            .await,
        3.0
    );
    assert_eq!(app.depth("jobs.store-eu").await, 0);
    assert_eq!(
        app.requests_for(PHONE).len(),
        1,
        "only fine-1 reached Octopods"
    );
    app.shutdown().await;
}

/// Point 3: retry headers from a producer are not the worker's history:
/// they neither exhaust the budget nor skip anything; headers of any type
/// and size are read without a panic.
#[tokio::test]
async fn forged_headers_neither_exhaust_the_budget_nor_crash_the_worker() {
    let app = spawn_worker("hostile-headers").await;
    let mut h = FieldTable::default();
    h.insert(
        "x-octopods-attempts".into(),
        AMQPValue::LongLongInt(i64::MAX),
    );
    h.insert("x-octopods-delayed".into(), AMQPValue::LongLongInt(-5));
    h.insert(
        "x-octopods-first-attempt-at".into(),
        text("2000-01-01T00:00:00Z"),
    );
    h.insert("x-octopods-history-sig".into(), text("00"));
    h.insert(
        "x-octopods-replays".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Void].into()),
    );
    h.insert("x-octopods-channel".into(), text(&"x".repeat(100_000)));
    // (RabbitMQ itself refuses a publish whose `x-death` is not a list, so
    // that forgery never reaches a worker.)
    h.insert("x-delivery-count".into(), text("many"));
    let body = serde_json::to_vec(&button_job("forged-1")).unwrap();
    app.publish_bytes(
        "store-eu",
        &body,
        BasicProperties::default().with_headers(h.clone()),
    )
    .await;
    let event = app.next_event().await;
    assert_eq!(event["event"], "sent", "{event}");
    assert_eq!(
        event["attempts"], 1,
        "a forged history is not this job's history"
    );
    assert_eq!(
        app.metric("octopods_forged_headers_total{channel=\"store-eu\"}")
            .await,
        1.0
    );
    // An invalid job with the same headers: its dead letter carries the
    // worker's own headers, not the producer's.
    let body = serde_json::to_vec(&invalid_job("forged-2")).unwrap();
    app.publish_bytes(
        "store-eu",
        &body,
        BasicProperties::default().with_headers(h),
    )
    .await;
    assert_eq!(app.next_event().await["job_id"], "forged-2");
    let d = app.next_dead_letter().await;
    assert_eq!(d.text("x-octopods-channel").as_deref(), Some("store-eu"));
    assert_eq!(d.int("x-octopods-attempts"), Some(1));
    assert_eq!(d.header("x-death"), None);
    assert_eq!(d.header("x-octopods-history-sig"), None);
    // A forged count that fits (3 of the 4 attempts allowed) must not
    // exhaust the job: one 502 later it is sent at attempt 2.
    app.script(Script {
        phone: Some(PHONE.into()),
        faults: vec![Fault::Outage { status: Some(502) }],
        repeat: 1,
        for_ms: None,
    });
    let mut h = FieldTable::default();
    h.insert("x-octopods-attempts".into(), AMQPValue::LongLongInt(3));
    let body = serde_json::to_vec(&button_job("forged-3")).unwrap();
    app.publish_bytes(
        "store-eu",
        &body,
        BasicProperties::default().with_headers(h),
    )
    .await;
    let event = app.next_event().await;
    assert_eq!(event["event"], "sent", "{event}");
    assert_eq!(event["attempts"], 2, "{event}");
    app.shutdown().await;
}

/// Point 4: the worker's copies do not inherit what lets the broker drop them.
#[tokio::test]
async fn dead_letters_are_durable_whatever_the_job_asked_for() {
    let app = spawn_worker("hostile-durable").await;
    let body = serde_json::to_vec(&invalid_job("short-lived")).unwrap();
    let props = BasicProperties::default()
        .with_expiration("50".into())
        .with_priority(9)
        .with_correlation_id("corr-1".into());
    app.publish_bytes("store-eu", &body, props).await;
    assert_eq!(app.next_event().await["reason"], "validation");
    // Well past the job's own 50 ms expiration: the dead letter is still there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = app.next_dead_letter().await;
    assert_eq!(d.body, body);
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(*d.properties.expiration(), None);
    assert_eq!(*d.properties.priority(), None);
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-1")
    );
    app.shutdown().await;
}

/// Point 5: the dead-letter queue deleted while invalid jobs flow: the worker
/// notices the returned publish, declares its topology again, backs off, and
/// every job ends in the (new) dead-letter queue.
#[tokio::test]
async fn deleting_the_dead_letter_queue_while_invalid_jobs_flow_loses_none() {
    let app = spawn_worker("hostile-dlq-deleted").await;
    let ch = broker().await.create_channel().await.unwrap();
    ch.queue_delete(app.queue("dead").as_str().into(), Default::default())
        .await
        .unwrap();
    let n = 30;
    app.publish_many(
        "store-eu",
        (0..n).map(|i| invalid_job(&format!("lost-{i}"))),
    )
    .await;
    let conn = broker().await;
    eventually(
        Duration::from_secs(30),
        "all dead letters back in the re-declared queue",
        || async {
            // A fresh channel each time: asking for a missing queue closes it.
            let ch = conn.create_channel().await.ok()?;
            let q = ch
                .queue_declare(
                    app.queue("dead").as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            (q.message_count() == n).then_some(())
        },
    )
    .await;
    let ids: std::collections::BTreeSet<String> = app
        .peek_all("dead")
        .await
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(&d.body).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), n as usize, "every job exactly once");
    assert!(
        app.metric("octopods_settle_failures_total{channel=\"store-eu\",kind=\"unroutable\"}")
            .await
            >= 1.0
    );
    assert_eq!(app.depth("jobs.store-eu").await, 0);
    app.wait_ready().await;
    app.shutdown().await;
}

/// Points 9 and 10: `dlq list` escapes what it prints, and every known
/// series exists from the start.
#[tokio::test]
async fn dlq_list_cannot_be_forged_and_metrics_exist_from_the_start() {
    let app = spawn_worker("hostile-terminal").await;
    for series in [
        "octopods_dead_lettered_total{channel=\"store-eu\",reason=\"poison\"}",
        "octopods_retries_total{cause=\"rate_limited\",channel=\"store-eu\"}",
        "octopods_api_requests_total{channel=\"store-eu\",status=\"503\"}",
        "octopods_jobs_completed_total{channel=\"store-eu\",outcome=\"sent\"}",
        "octopods_settle_failing",
        "octopods_broker_blocked",
    ] {
        assert_eq!(app.metric(series).await, 0.0, "{series}");
    }
    let evil = "evil\n2026-01-01T00:00:00.000Z  validation  store-eu  forged-row\u{1b}[2J";
    app.publish_job(&invalid_job(evil)).await;
    assert_eq!(app.next_event().await["job_id"], json!(evil));
    let out = app.cli(&["dlq", "list"]).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "a header and one row:\n{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    assert!(stdout.contains("evil\\n2026"), "{stdout}");
    app.shutdown().await;
}

/// Point 8: a client that opened the metrics port and never finished its
/// request cannot hold the stop.
#[tokio::test]
async fn a_half_open_metrics_client_does_not_hold_the_shutdown() {
    let mut app = spawn_worker("hostile-half-open").await;
    let mut stuck = std::net::TcpStream::connect(app.http).unwrap();
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop_worker())
        .await
        .expect("the worker stopped despite the half-open client");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
    app.shutdown().await;
}

/// Point 11: plain http to a remote Octopods is refused by check-config.
#[tokio::test]
async fn check_config_refuses_keys_in_clear_text() {
    let app = spawn_worker("hostile-http").await;
    let text = std::fs::read_to_string(&app.config_path)
        .unwrap()
        .replace(&app.sandbox.url(), "http://api.octopods.io");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "octopods.base_url: http:// to api.octopods.io would send the API keys in clear text"
        ),
        "{err}"
    );
    app.shutdown().await;
}

/// Point 6: Octopods hangs, then recovers, while the one request permit is
/// the bottleneck: jobs waiting for the permit must not have banked rate
/// slots meanwhile — never more than `rate × t + burst` in any window.
#[tokio::test]
async fn the_budget_holds_when_a_slow_octopods_recovers() {
    let mut ch = TestChannel::new("store-eu");
    ch.rate = 5.0;
    ch.burst = 1;
    let app = spawn_with(
        "hostile-recovery",
        Options {
            channels: vec![ch],
            max_concurrent_requests: Some(1),
            ..Options::default()
        },
    )
    .await;
    app.script(Script {
        phone: None,
        faults: vec![Fault::Hang { ms: 1500 }],
        repeat: 1,
        for_ms: None,
    });
    let n = 12;
    app.publish_many("store-eu", (0..n).map(|i| button_job(&format!("slow-{i}"))))
        .await;
    let mut sent = 0;
    while sent < n {
        if app.next_event().await["event"] == "sent" {
            sent += 1;
        }
    }
    let at: Vec<u64> = app.requests().iter().map(|r| r.at_ms).collect();
    for (i, start) in at.iter().enumerate() {
        let in_window = at.iter().skip(i).filter(|t| **t < start + 1000).count();
        assert!(
            in_window <= 5 + 1,
            "{in_window} requests within 1 s from {start} ms (budget 5/s, burst 1): {at:?}"
        );
    }
    app.shutdown().await;
}

/// A dead letter's headers are input to the dlq tools: a failure time at the
/// calendar's edge (in UTC it is year 10000) panicked `dlq stats` inside
/// `time`'s `to_offset`. Every dlq command reads it and exits 0.
#[tokio::test]
async fn dlq_tools_read_a_failure_time_at_the_calendar_edge() {
    use lapin::types::{AMQPValue, FieldTable};
    let app = spawn_worker("hostile-calendar").await;
    for at in [
        "9999-12-31T23:59:59-23:59",
        "-9999-01-01T00:00:00+23:59",
        "0000-01-01T00:00:00+00:01",
    ] {
        let mut h = FieldTable::default();
        h.insert(
            "x-octopods-reason".into(),
            AMQPValue::LongString("validation".into()),
        );
        h.insert(
            "x-octopods-channel".into(),
            AMQPValue::LongString("store-eu".into()),
        );
        h.insert(
            "x-octopods-failed-at".into(),
            AMQPValue::LongString(at.into()),
        );
        let body = serde_json::to_vec(&button_job(&format!("edge-{at}"))).unwrap();
        app.publish_to(
            "dead",
            "validation.store-eu",
            &body,
            lapin::BasicProperties::default().with_headers(h),
        )
        .await;
    }
    for args in [
        &["dlq", "stats"][..],
        &["dlq", "list"],
        &["dlq", "list", "--json"],
        &["dlq", "list", "--older-than", "1h"],
        &["dlq", "replay", "--dry-run"],
    ] {
        let out = app.cli(args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(app.depth("dead").await, 3, "reading takes nothing");
    app.shutdown().await;
}
