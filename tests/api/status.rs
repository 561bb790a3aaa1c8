//! Delivery status (docs/contract.md §12): a tracked channel's sent messages are
//! polled on a durable schedule, and each new status is published once.

use std::{collections::BTreeMap, time::Duration};

use octopods_worker::sandbox::{Fault, Script};
use serde_json::Value;

use crate::helpers::*;

/// A tracked channel polling after 200 ms, then every 300 ms.
fn tracked(horizon: &str) -> Options {
    let mut ch = TestChannel::new("store-eu");
    ch.track_status = true;
    Options {
        channels: vec![ch],
        extra_toml: format!(
            "{TEST_RETRY}[status]\nschedule = [\"200ms\", \"300ms\"]\nhorizon = \"{horizon}\"\n"
        ),
        ..Options::default()
    }
}

fn status(faults: Vec<Fault>, repeat: u32) -> Script {
    Script {
        phone: Some(PHONE.into()),
        faults,
        repeat,
        for_ms: None,
    }
}

fn says(s: &str) -> Fault {
    Fault::MessageStatus {
        status: s.into(),
        failure_reason: None,
    }
}

/// The events of one job, in order, until `last` or a timeout.
async fn events_until(app: &TestApp, last: &str) -> Vec<Value> {
    let mut all = Vec::new();
    while all.last().is_none_or(|e: &Value| e["event"] != last) {
        all.push(app.next_event().await);
    }
    all
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn delivered_then_read_arrive_in_order_with_the_octopods_times() {
    // DELIVERED from 300 ms to 1.5 s: several polls (every 300 ms) see it
    // even on a loaded machine; with READ at 600 ms one late poll saw READ
    // first, and the delivered event carried the status then observed.
    let app = spawn_with(
        "status-order",
        Options {
            sandbox_status_after: (Duration::from_millis(300), Duration::from_millis(1500)),
            ..tracked("30s")
        },
    )
    .await;
    app.publish_job(&button_job("st-1")).await;
    let events = events_until(&app, "read").await;
    assert_eq!(kinds(&events), ["sent", "delivered", "read"]);
    let (delivered, read) = (&events[1], &events[2]);
    assert_eq!(delivered["message_id"], events[0]["message_id"]);
    assert_eq!(
        delivered["channel_message_id"],
        events[0]["channel_message_id"]
    );
    assert_eq!(delivered["job_id"], "st-1");
    assert_eq!(delivered["status"], "DELIVERED");
    assert!(
        delivered["delivered_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{delivered}"
    );
    assert!(read["read_at"].as_str().is_some(), "{read}");
    assert_eq!(read["metadata"], events[0]["metadata"]);
    let polls = || {
        app.requests()
            .iter()
            .filter(|r| r.path.contains("/messages/"))
            .count()
    };
    let at_read = polls();
    assert!(at_read >= 2, "{at_read} polls");
    // Tracking ends at read: no poll after it (the schedule's 300 ms step
    // would have polled at least twice in this window), no event either.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(polls(), at_read, "polled again after read");
    assert!(app.try_next_event().await.is_none(), "an event after read");
    app.shutdown().await;
}

#[tokio::test]
async fn failed_carries_the_reason_and_unknown_asks_again() {
    let app = spawn_with("status-failed", tracked("30s")).await;
    app.publish_job(&button_job("st-fail")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    app.script(status(
        vec![
            says("UNKNOWN"),
            Fault::MessageStatus {
                status: "FAILED".into(),
                failure_reason: Some("recipient not on WhatsApp".into()),
            },
        ],
        1,
    ));
    let e = app.next_event().await;
    assert_eq!(e["event"], "failed", "{e}");
    assert_eq!(e["failure_reason"], "recipient not on WhatsApp");
    // UNKNOWN, then DELIVERED: one delivered event.
    app.publish_job(&button_job("st-unknown")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    app.script(status(
        vec![says("UNKNOWN"), says("delivered"), says("delivered")],
        1,
    ));
    let events = events_until(&app, "read").await;
    assert_eq!(kinds(&events), ["delivered", "read"]);
    assert_eq!(
        app.metric("octopods_status_events_total{channel=\"store-eu\",status=\"delivered\"}")
            .await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn past_the_horizon_the_status_is_unknown() {
    let mut opts = tracked("1s");
    // Never delivered within the test.
    opts.sandbox_status_after = (Duration::from_secs(600), Duration::from_secs(900));
    let app = spawn_with("status-horizon", opts).await;
    app.publish_job(&button_job("st-stuck")).await;
    let events = events_until(&app, "status_unknown").await;
    assert_eq!(kinds(&events), ["sent", "status_unknown"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_status_outage_is_retried_on_the_schedule_and_dead_letters_nothing() {
    let app = spawn_with("status-outage", tracked("30s")).await;
    app.publish_job(&button_job("st-storm")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    app.script(Script {
        phone: Some(PHONE.into()),
        faults: vec![Fault::Outage { status: Some(503) }],
        repeat: 0,
        for_ms: Some(1500),
    });
    let events = events_until(&app, "read").await;
    assert!(kinds(&events).ends_with(&["read"]), "{events:?}");
    assert_eq!(app.depth("dead").await, 0);
    assert!(
        app.metric("octopods_status_polls_total{channel=\"store-eu\",status=\"503\"}")
            .await
            >= 2.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn polls_share_the_channel_budget_with_sends() {
    let mut opts = tracked("30s");
    opts.channels[0].rate = 5.0;
    opts.channels[0].burst = 1;
    let app = spawn_with("status-budget", opts).await;
    let n = 8;
    app.publish_many("store-eu", (0..n).map(|i| button_job(&format!("b-{i}"))))
        .await;
    let mut read = 0;
    while read < n {
        if app.next_event().await["event"] == "read" {
            read += 1;
        }
    }
    let at: Vec<u64> = app.requests().iter().map(|r| r.at_ms).collect();
    assert_budget(&at, 5.0, 1, Duration::from_secs(1));
    app.shutdown().await;
}

#[tokio::test]
async fn pending_checks_survive_a_kill_and_none_is_published_twice() {
    let mut opts = tracked("60s");
    opts.extra_toml =
        format!("{TEST_RETRY}[status]\nschedule = [\"2s\", \"300ms\"]\nhorizon = \"60s\"\n");
    let mut app = spawn_with("status-kill", opts).await;
    app.stop_worker().await;
    let n = 50;
    let mut worker = BinaryWorker::start(&app.config_path).await;
    app.publish_many("store-eu", (0..n).map(|i| button_job(&format!("k-{i}"))))
        .await;
    let mut sent = 0;
    while sent < n {
        if app.next_event().await["event"] == "sent" {
            sent += 1;
        }
    }
    // Every check is waiting in its 2 s delay queue: kill the worker.
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10)).await;
    let _restarted = BinaryWorker::start(&app.config_path).await;
    let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
    while seen.keys().filter(|(_, e)| e == "read").count() < n {
        let e = app.next_event().await;
        let key = (
            e["job_id"].as_str().unwrap().to_owned(),
            e["event"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(e) = app.try_next_event().await {
        let key = (
            e["job_id"].as_str().unwrap().to_owned(),
            e["event"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    assert_eq!(seen.keys().filter(|(_, e)| e == "read").count(), n);
    app.shutdown().await;
}

/// An Octopods answer chooses no path for the channel's key: a `message_id`
/// of `.` or `..` would be collapsed by the URL parser and poll
/// `/api/v1/whatsapp/` or `/api/v1/whatsapp/messages/`. Such a message is
/// sent and reported, and never polled; a normal one after it still is.
#[tokio::test]
async fn a_message_id_that_is_a_dot_segment_is_never_polled() {
    let app = spawn_with("status-dots", tracked("30s")).await;
    let odd = [".", "..", "", "%2e%2E", "a/../../admin?x=1#f"];
    app.script(Script {
        phone: Some(PHONE.into()),
        faults: odd
            .iter()
            .map(|id| Fault::Accepted {
                message_id: (*id).into(),
            })
            .collect(),
        repeat: 1,
        for_ms: None,
    });
    for i in 0..odd.len() {
        app.publish_job(&button_job(&format!("dots-{i}"))).await;
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
    }
    app.publish_job(&button_job("dots-normal")).await;
    loop {
        let e = app.next_event().await;
        if e["job_id"] == "dots-normal" && e["event"] == "read" {
            break;
        }
    }
    let polled: Vec<String> = app
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/interactive"))
        .map(|r| r.path)
        .collect();
    assert!(!polled.is_empty());
    for path in &polled {
        let id = path
            .strip_prefix("/api/v1/whatsapp/messages/")
            .unwrap_or_else(|| panic!("a poll left its path: {path}"));
        // The ids that can be one segment reach the messages route whole
        // (the sandbox records the id decoded).
        assert!(
            id.starts_with("msg_") || id == "%2e%2E" || id == "a/../../admin?x=1#f",
            "{path}"
        );
    }
    app.shutdown().await;
}
