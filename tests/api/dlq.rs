//! Dead-letter operations through the real binary and the real broker.

use std::{collections::BTreeSet, time::Duration};

use futures_util::StreamExt;

use lapin::{
    BasicProperties,
    options::BasicNackOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use octopods_worker::sandbox::{Fault, Script};
use serde_json::{Value, json};

use crate::helpers::*;

const PHONE_B: &str = "+15550000002";

fn forever(phone: &str, fault: Fault) -> Script {
    Script {
        phone: Some(phone.into()),
        faults: vec![fault],
        repeat: 0,
        for_ms: None,
    }
}

fn job_for(phone: &str, id: &str) -> Value {
    let mut j = button_job(id);
    j["destination_phone"] = json!(phone);
    j
}

/// What must not change about a message left in the queue: its bytes,
/// routing key and headers — all but `x-delivery-count`, which a quorum
/// queue itself raises each time a message is looked at and returned.
fn fingerprint(d: &DeadLetter) -> (Vec<u8>, String, String) {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    let mut map = headers.inner().clone();
    map.remove("x-delivery-count");
    headers = map.into();
    (
        d.body.clone(),
        d.routing_key.clone(),
        format!("{headers:?}"),
    )
}

async fn dead_events(app: &TestApp, n: usize) {
    for _ in 0..n {
        assert_eq!(app.next_event().await["event"], "dead_lettered");
    }
}

#[tokio::test]
async fn replay_by_reason_moves_exactly_the_matching_jobs() {
    let app = spawn_worker("dlq-replay").await;
    app.script(forever(PHONE, Fault::Window));
    app.script(forever(PHONE_B, Fault::NotEnabled));
    for i in 0..3 {
        app.publish_job(&job_for(PHONE, &format!("w-{i}"))).await;
    }
    for i in 0..2 {
        app.publish_job(&job_for(PHONE_B, &format!("f-{i}"))).await;
    }
    dead_events(&app, 5).await;
    eventually(Duration::from_secs(5), "5 dead letters", || async {
        (app.depth("dead").await == 5).then_some(())
    })
    .await;

    let listed = app.cli(&["dlq", "list", "--json"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let lines: Vec<Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines.iter().filter(|l| l["reason"] == "window").count(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["channel"] == "store-eu" && l["replays"] == 0 && l["attempts"] == 1)
    );
    let stats = app.cli(&["dlq", "stats", "--json"]).await;
    let stats: Value = serde_json::from_str(stdout(&stats).trim()).unwrap();
    assert_eq!(stats["total"], 5);

    let before: BTreeSet<_> = app
        .peek_all("dead")
        .await
        .iter()
        .filter(|d| d.text("x-octopods-reason").as_deref() == Some("forbidden"))
        .map(fingerprint)
        .collect();
    assert_eq!(before.len(), 2);

    app.clear_scripts();
    let out = app.cli(&["dlq", "replay", "--reason", "window"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("matched 3; replayed 3"),
        "{}",
        stderr(&out)
    );

    let mut sent = BTreeSet::new();
    for _ in 0..3 {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.insert(e["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        sent,
        ["w-0", "w-1", "w-2"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let after: BTreeSet<_> = app.peek_all("dead").await.iter().map(fingerprint).collect();
    assert_eq!(
        after, before,
        "the forbidden jobs stay byte-identical with their headers"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_purge_needs_yes() {
    let app = spawn_worker("dlq-dry-run").await;
    app.script(forever(PHONE, Fault::Window));
    app.script(forever(PHONE_B, Fault::NotEnabled));
    for (phone, id) in [(PHONE, "w-0"), (PHONE, "w-1"), (PHONE_B, "f-0")] {
        app.publish_job(&job_for(phone, id)).await;
    }
    dead_events(&app, 3).await;
    let before: BTreeSet<_> = app.peek_all("dead").await.iter().map(fingerprint).collect();
    assert_eq!(before.len(), 3);

    let out = app.cli(&["dlq", "replay", "--dry-run"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("would replay 3"), "{}", stderr(&out));
    let out = app.cli(&["dlq", "purge", "--dry-run"]).await;
    assert!(stderr(&out).contains("would purge 3"), "{}", stderr(&out));
    let out = app.cli(&["dlq", "purge", "--reason", "window"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    let after: BTreeSet<_> = app.peek_all("dead").await.iter().map(fingerprint).collect();
    assert_eq!(
        after, before,
        "dry runs and an unconfirmed purge change nothing"
    );
    assert_eq!(app.depth("results").await, 0, "no job was replayed");

    let out = app
        .cli(&["dlq", "purge", "--reason", "window", "--yes"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("purged 2"), "{}", stderr(&out));
    let left = app.peek_all("dead").await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].text("x-octopods-reason").as_deref(),
        Some("forbidden")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn replay_cap_stops_a_job_that_keeps_failing() {
    let app = spawn_with(
        "dlq-cap",
        Options {
            extra_toml: "[dlq]\nmax_replays = 2\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut job = button_job("loop");
    job["waba_interactive_message"]["body"]["text"] = json!("x".repeat(1025));
    app.publish_job(&job).await;
    dead_events(&app, 1).await;
    for round in 1..=2 {
        let out = app.cli(&["dlq", "replay", "--job-id", "loop"]).await;
        assert!(
            stderr(&out).contains("replayed 1"),
            "round {round}: {}",
            stderr(&out)
        );
        dead_events(&app, 1).await;
        let d = eventually(
            Duration::from_secs(5),
            "the job back in the DLQ",
            || async { app.peek_all("dead").await.into_iter().next() },
        )
        .await;
        assert_eq!(d.int("x-octopods-replays"), Some(round));
    }
    let out = app.cli(&["dlq", "replay", "--job-id", "loop"]).await;
    assert!(
        stderr(&out).contains("replayed 0; skipped 1 (replay cap 2 reached: 1"),
        "{}",
        stderr(&out)
    );
    // The command waits, as it closes, until the queue shows what it held
    // as ready again: read at once, the capped job is there.
    assert_eq!(app.depth("dead").await, 1, "a capped job stays in the DLQ");
    app.shutdown().await;
}

#[tokio::test]
async fn replay_killed_midway_and_run_again_loses_no_job() {
    const N: usize = 4000;
    let mut app = spawn_worker("dlq-kill").await;
    // Jobs replayed to the channel queue stay there: no worker consumes.
    app.stop_worker().await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-octopods-reason".into(),
        AMQPValue::LongString(LongString::from("window")),
    );
    headers.insert(
        "x-octopods-channel".into(),
        AMQPValue::LongString(LongString::from("store-eu")),
    );
    headers.insert("x-octopods-replays".into(), AMQPValue::LongLongInt(0));
    for i in 0..N {
        let body = serde_json::to_vec(&button_job(&format!("k-{i}"))).unwrap();
        app.publish_to(
            "dead",
            "window.store-eu",
            &body,
            BasicProperties::default().with_headers(headers.clone()),
        )
        .await;
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["dlq", "replay", "--config"])
        .arg(&app.config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the replay to be under way",
        || async { (app.depth("jobs.store-eu").await >= 300).then_some(()) },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let moved_before_kill = app.depth("jobs.store-eu").await;
    assert!(
        (moved_before_kill as usize) < N,
        "the replay finished before it could be killed"
    );

    let out = app.cli(&["dlq", "replay"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.depth("dead").await, 0);

    let replayed = app.drain("jobs.store-eu").await;
    let ids: BTreeSet<String> = replayed
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(&d.body).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), N, "every job survived the kill");
    let duplicates = replayed.len() - N;
    assert!(
        duplicates <= 1,
        "{duplicates} duplicates; at most the one in flight at the kill"
    );
    assert!(
        replayed
            .iter()
            .all(|d| d.int("x-octopods-replays") == Some(1)
                && d.header("x-octopods-reason").is_none())
    );
    eprintln!(
        "killed after {moved_before_kill} of {N} replayed; {duplicates} duplicate(s), 0 lost"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn poison_job_is_shown_as_poison_and_can_be_replayed() {
    let mut app = spawn_with(
        "dlq-poison",
        Options {
            extra_toml: "[retry]\nmax_attempts = 2\n".into(),
            delivery_limit: Some(3),
            ..Options::default()
        },
    )
    .await;
    app.stop_worker().await;
    app.publish_job(&button_job("poison-1")).await;
    // A consumer that keeps giving the job back, as a crashing worker would.
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let queue = app.queue("jobs.store-eu");
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    while app.depth("dead").await == 0 {
        assert!(
            deliveries < 10,
            "RabbitMQ did not dead-letter the job after {deliveries} deliveries"
        );
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            deliveries += 1;
            d.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .unwrap();
        }
    }
    drop(conn.close(200, "OK".into()).await);
    let listed = app
        .cli(&["dlq", "list", "--json", "--reason", "poison"])
        .await;
    let line: Value = serde_json::from_str(stdout(&listed).trim())
        .unwrap_or_else(|_| panic!("{}", stdout(&listed)));
    assert_eq!(line["reason"], "poison");
    assert_eq!(line["channel"], "store-eu");
    assert_eq!(line["job_id"], "poison-1");

    app.start_worker().await;
    let out = app.cli(&["dlq", "replay", "--reason", "poison"]).await;
    assert!(stderr(&out).contains("replayed 1"), "{}", stderr(&out));
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["job_id"], "poison-1");
    app.shutdown().await;
}

#[tokio::test]
async fn unroutable_jobs_can_be_replayed_once_the_channel_is_configured() {
    let app = spawn_worker("dlq-unroutable").await;
    let body = serde_json::to_vec(&button_job("for-us")).unwrap();
    app.publish_bytes("store-us", &body, BasicProperties::default())
        .await;
    eventually(Duration::from_secs(5), "the job in unroutable", || async {
        (app.depth("unroutable").await == 1).then_some(())
    })
    .await;
    let listed = app
        .cli(&["dlq", "list", "--from", "unroutable", "--json"])
        .await;
    let line: Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    assert_eq!(line["reason"], "unroutable");
    assert_eq!(line["channel"], "store-us");

    let out = app.cli(&["dlq", "replay", "--from", "unroutable"]).await;
    assert!(
        stderr(&out).contains("channel not configured: 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(app.depth("unroutable").await, 1);

    // The operator adds the channel and declares its queue.
    let key_file = app.config_path.with_file_name("store-us");
    std::fs::write(&key_file, "k").unwrap();
    let mut text = std::fs::read_to_string(&app.config_path).unwrap();
    text.push_str(&format!(
        "[[channels]]\nname = \"store-us\"\napi_key_file = \"{}\"\nrate_per_second = 5\n",
        key_file.display()
    ));
    std::fs::write(&app.config_path, text).unwrap();
    let out = app.cli(&["topology"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = app.cli(&["dlq", "replay", "--from", "unroutable"]).await;
    assert!(stderr(&out).contains("replayed 1"), "{}", stderr(&out));
    assert_eq!(app.depth("unroutable").await, 0);
    assert_eq!(app.depth("jobs.store-us").await, 1);
    let moved = app.peek_all("jobs.store-us").await;
    assert_eq!(moved[0].body, body);
    drop(app.drain("jobs.store-us").await);
    let ch = broker().await.create_channel().await.unwrap();
    drop(
        ch.queue_delete(
            app.queue("jobs.store-us").as_str().into(),
            Default::default(),
        )
        .await,
    );
    app.shutdown().await;
}
