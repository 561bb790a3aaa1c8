//! The dead-letter tools see the whole queue every time (exact
//! snapshots): commands back to back, two operators at once, and a purge
//! bound to its backup. Dead letters are written straight to the dead-letter
//! exchange, as the worker writes them, so thousands take a second.

use std::time::Duration;

use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};

use crate::helpers::*;

const N: usize = 5_000;

/// Publishes `n` dead letters (`reason`, channel store-eu) with ids
/// `<tag>-<i>`, waiting for every confirm.
async fn dead_letters(app: &TestApp, tag: &str, reason: &str, n: usize) {
    let ch = broker().await.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    for i in 0..n {
        let mut h = FieldTable::default();
        for (k, v) in [
            ("x-octopods-reason", reason),
            ("x-octopods-channel", "store-eu"),
            ("x-octopods-error", "test"),
            ("x-octopods-failed-at", "2026-11-24T10:00:00.000Z"),
        ] {
            h.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        }
        let body = serde_json::to_vec(&button_job(&format!("{tag}-{i}"))).unwrap();
        drop(
            ch.basic_publish(
                app.queue("dead").as_str().into(),
                format!("{reason}.store-eu").as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(h),
            )
            .await
            .expect("publish"),
        );
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty());
}

async fn app(test: &str) -> TestApp {
    // No worker: only the topology and the tools.
    let app = spawn_worker(test).await;
    app.wait_ready().await;
    app
}

#[tokio::test]
async fn commands_back_to_back_each_see_the_whole_queue() {
    let app = app("dlq-back-to-back").await;
    dead_letters(&app, "v", "validation", N).await;

    // stats → export
    let stats = app.cli(&["dlq", "stats", "--json"]).await;
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["total"], N);
    let export = app.cli(&["dlq", "export"]).await;
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(export.stdout.iter().filter(|b| **b == b'\n').count(), N);
    assert!(
        stderr(&export).contains(&format!("{N} message(s); matched {N}; exported {N}")),
        "{}",
        stderr(&export)
    );

    // export → replay --dry-run
    let dry = app.cli(&["dlq", "replay", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stderr(&dry).contains(&format!("would replay {N}")),
        "{}",
        stderr(&dry)
    );

    // list → purge
    let list = app.cli(&["dlq", "list", "--json"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(list.stdout.iter().filter(|b| **b == b'\n').count(), N);
    let purge = app.cli(&["dlq", "purge", "--yes"]).await;
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(
        stderr(&purge).contains(&format!("purged {N}")),
        "{}",
        stderr(&purge)
    );
    assert_eq!(app.depth("dead").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_operator_waits_or_refuses_never_works_on_a_part() {
    let app = app("dlq-two-operators").await;
    dead_letters(&app, "v", "validation", N).await;
    let bin = env!("CARGO_BIN_EXE_octopods-worker");
    let path = app.config_path.clone();
    let run = |args: &'static [&'static str]| {
        let path = path.clone();
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args(args)
                .arg("--config")
                .arg(&path)
                .output()
                .expect("run")
        })
    };
    // Both export at once, told to wait for each other: both see all N.
    let a = run(&["dlq", "export", "--wait", "60s"]);
    let b = run(&["dlq", "export", "--wait", "60s"]);
    for out in [a.join().unwrap(), b.join().unwrap()] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            out.stdout.iter().filter(|b| **b == b'\n').count(),
            N,
            "{}",
            stderr(&out)
        );
    }
    // Another operator holds the lock (here: the test, as a dlq command
    // would): without --wait a purge refuses and deletes nothing; with --wait
    // it waits for the lock and then purges the whole queue.
    let holder = broker().await;
    let lock_ch = holder.create_channel().await.unwrap();
    let lock = format!("{}.lock", app.queue("dead"));
    lock_ch
        .queue_declare(
            lock.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let refused = app.cli(&["dlq", "purge", "--yes"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("another dlq command is working on")
            && stderr(&refused).contains("nothing was done"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        app.depth("dead").await,
        N as u32,
        "the refused purge deleted nothing"
    );
    let waiting = run(&["dlq", "purge", "--yes", "--wait", "60s"]);
    // Its connection is up: it is at the lock (it tries it right away).
    let prefix = app.prefix.clone();
    eventually(
        Duration::from_secs(15),
        "the waiting purge to connect",
        || {
            let prefix = prefix.clone();
            async move {
                let out = tokio::process::Command::new(rabbitmqctl_path())
                    .args(["-q", "list_connections", "client_properties"])
                    .output()
                    .await
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.contains(&format!("octopods-worker dlq prefix={prefix} "))
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(holder.close(200, "OK".into()).await);
    let purged = waiting.join().unwrap();
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(
        stderr(&purged).contains("waiting up to 1m"),
        "it waited: {}",
        stderr(&purged)
    );
    assert!(
        stderr(&purged).contains(&format!("purged {N}")),
        "{}",
        stderr(&purged)
    );
    assert_eq!(app.depth("dead").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn purge_bound_to_an_export_deletes_exactly_the_exported_dead_letters() {
    let app = app("dlq-purge-exported").await;
    dead_letters(&app, "old", "validation", N).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.jsonl");
    let export = app.cli(&["dlq", "export"]).await;
    assert!(export.status.success(), "{}", stderr(&export));
    std::fs::write(&backup, &export.stdout).unwrap();
    // New dead letters arrive between the backup and the purge, some of them
    // byte-identical in body to exported ones.
    dead_letters(&app, "new", "window", 300).await;
    dead_letters(&app, "old", "expired", 5).await;
    let purge = app
        .cli(&[
            "dlq",
            "purge",
            "--yes",
            "--only-exported",
            backup.to_str().unwrap(),
        ])
        .await;
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(
        stderr(&purge).contains(&format!("purged {N}")),
        "{}",
        stderr(&purge)
    );
    assert!(
        stderr(&purge).contains("kept 305 not in the export file"),
        "{}",
        stderr(&purge)
    );
    let left = app.peek_all("dead").await;
    assert_eq!(left.len(), 305);
    assert!(left.iter().all(|d| d.routing_key != "validation.store-eu"));
    // Purging against the same backup again finds nothing of it: an error.
    let again = app
        .cli(&[
            "dlq",
            "purge",
            "--yes",
            "--only-exported",
            backup.to_str().unwrap(),
        ])
        .await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains(&format!(
            "{N} line(s) of the export file matched no dead letter"
        )),
        "{}",
        stderr(&again)
    );
    assert_eq!(app.depth("dead").await, 305);
    app.shutdown().await;
}

/// Three operators read the dead letters while a fourth asks for the
/// stats, round after round: each command counts every one, every time.
/// Each read hands the messages back, and RabbitMQ 4.0 counts every return
/// toward a quorum queue's delivery limit — 20 unless the queue sets one —
/// and drops a message past it. With the dead-letter queue declared as on
/// 3.x, the 21st read found nothing: `dlq stats` said 0 of 300, and the
/// dead letters were gone (issue 39).
#[tokio::test]
async fn readers_at_once_each_count_every_dead_letter() {
    const DEAD: usize = 300;
    let app = app("dlq-readers-at-once").await;
    dead_letters(&app, "r", "rejected", DEAD).await;
    for round in 0..6 {
        let list = || app.cli(&["dlq", "list", "--json", "--wait", "60s"]);
        let stats = app.cli(&["dlq", "stats", "--json", "--wait", "60s"]);
        let (a, b, c, s) = tokio::join!(list(), list(), list(), stats);
        for listed in [a, b, c] {
            let lines = ok(&listed).lines().count();
            assert_eq!(lines, DEAD, "round {round}: a reader saw {lines}");
        }
        let s: serde_json::Value = serde_json::from_str(ok(&s).trim()).expect("stats JSON");
        assert_eq!(s["total"], DEAD, "round {round}: {s}");
    }
    app.shutdown().await;
}
