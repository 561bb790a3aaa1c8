//! Channels added and removed while the worker runs (docs/contract.md §16):
//! every replica follows within 2 s through RabbitMQ alone, the key stays
//! in a file the replicas read, and no job is lost on the way in or out.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

fn runtime() -> Options {
    Options {
        runtime_channels: true,
        ..Options::default()
    }
}

fn job_for(channel: &str, id: &str) -> Value {
    let mut j = button_job(id);
    j["channel"] = channel.into();
    j
}

/// `channel add NAME --rate RATE --key-file KEY`.
async fn add(app: &TestApp, name: &str, rate: &str, key: &str) -> std::process::Output {
    app.cli(&["channel", "add", name, "--rate", rate, "--key-file", key])
        .await
}

/// The next `n` events, each `sent` for `channel`: their job ids, sorted.
async fn sent_ids(app: &TestApp, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let e = app.next_event().await;
        assert_eq!(
            (e["event"].as_str(), e["channel"].as_str()),
            (Some("sent"), Some(channel)),
            "{e}"
        );
        ids.push(e["job_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids
}

fn budget(channel: &str) -> String {
    format!("octopods_channel_rate_budget{{channel=\"{channel}\"}}")
}

#[tokio::test]
async fn a_channel_added_at_run_time_takes_its_waiting_jobs_and_every_replica_follows() {
    let mut app = spawn_with("roster-add", runtime()).await;
    let other = BinaryWorker::start(&app.config_path).await;
    // Published before the channel exists: kept in the unroutable queue.
    app.publish_many(
        "shop-new",
        (0..3).map(|i| job_for("shop-new", &format!("early-{i}"))),
    )
    .await;
    assert_eq!(app.depth("unroutable").await, 3);
    let key = "key-shop-new-s3cret";
    std::fs::write(app.runtime_keys().join("shop-new.key"), format!("{key}\n")).unwrap();
    app.added.push("shop-new".into());
    let asked = Instant::now();
    let out = ok(&add(&app, "shop-new", "50", "shop-new.key").await);
    assert!(out.contains("shop-new: added (rate 50/s, burst 1"), "{out}");
    assert!(out.contains("moved 3 jobs"), "{out}");
    assert!(out.contains("consumed by a replica"), "{out}");
    let addrs = [app.http.to_string(), other.addr.clone()];
    for addr in &addrs {
        eventually(
            Duration::from_secs(2),
            "every replica serves shop-new",
            || async { (metric_at(addr, &budget("shop-new")).await? == 50.0).then_some(()) },
        )
        .await;
    }
    eprintln!("add reached 2 replicas in {:?}", asked.elapsed());
    assert_eq!(
        sent_ids(&app, "shop-new", 3).await,
        ["early-0", "early-1", "early-2"]
    );
    assert_eq!(app.depth("unroutable").await, 0);
    assert_eq!(
        requests_with_key(&app, key).len(),
        3,
        "sent with the key from its file"
    );
    let list = ok(&app.cli(&["channel", "list", "--json"]).await);
    let rows: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["channel"] == "shop-new")
        .expect("listed");
    assert_eq!(
        (row["from"].as_str(), row["key"].as_str()),
        (Some("added"), Some("shop-new.key"))
    );
    assert!(!list.contains(key), "the key itself is never shown");
    // A replica started later serves it too: the stream is its memory.
    drop(other);
    app.stop_worker().await;
    app.start_worker().await;
    assert_eq!(app.metric(&budget("shop-new")).await, 50.0);
    app.publish_many("shop-new", [job_for("shop-new", "later")])
        .await;
    let e = app.next_event().await;
    assert_eq!(
        (e["event"].as_str(), e["job_id"].as_str()),
        (Some("sent"), Some("later"))
    );
    // The same add again changes nothing and says so.
    let again = ok(&add(&app, "shop-new", "5", "shop-new.key").await);
    assert!(again.contains("already added"), "{again}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_channel_removed_with_jobs_queued_is_refused_unless_asked_and_loses_none() {
    let app = {
        let mut app = spawn_with("roster-remove", runtime()).await;
        app.added.push("shop-gone".into());
        app
    };
    std::fs::write(app.runtime_keys().join("gone.key"), "key-gone").unwrap();
    ok(&add(&app, "shop-gone", "50", "gone.key").await);
    ok(&app.cli(&["channel", "pause", "shop-gone"]).await);
    eventually(Duration::from_secs(2), "shop-gone paused", || async {
        (app.metric("octopods_channel_paused{channel=\"shop-gone\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    app.publish_many(
        "shop-gone",
        (0..5).map(|i| job_for("shop-gone", &format!("q-{i}"))),
    )
    .await;
    assert_eq!(app.depth("jobs.shop-gone").await, 5);

    let out = app.cli(&["channel", "remove", "shop-gone"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("5 jobs are queued") && err.contains("nothing changed"),
        "{err}"
    );
    // Nothing changed: still routed, still served.
    app.publish_many("shop-gone", [job_for("shop-gone", "q-5")])
        .await;
    assert_eq!(app.depth("jobs.shop-gone").await, 6);
    assert_eq!(app.metric(&budget("shop-gone")).await, 50.0);

    let out = ok(&app
        .cli(&["channel", "remove", "shop-gone", "--keep-queued"])
        .await);
    assert!(out.contains("6 jobs stay in"), "{out}");
    eventually(
        Duration::from_secs(2),
        "shop-gone no longer served",
        || async {
            metric_at(&app.http.to_string(), &budget("shop-gone"))
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    // New jobs for it wait in the unroutable queue; the queued ones stay.
    app.publish_many("shop-gone", [job_for("shop-gone", "after")])
        .await;
    assert_eq!(app.depth("unroutable").await, 1);
    assert_eq!(app.depth("jobs.shop-gone").await, 6);
    assert!(
        app.requests().is_empty(),
        "nothing sent for a paused, then removed channel"
    );

    // Added again: a fresh start (not paused), every job sent once.
    let out = ok(&add(&app, "shop-gone", "50", "gone.key").await);
    assert!(out.contains("moved 1 jobs"), "{out}");
    assert_eq!(
        sent_ids(&app, "shop-gone", 7).await,
        ["after", "q-0", "q-1", "q-2", "q-3", "q-4", "q-5"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn channel_add_and_remove_refuse_what_they_cannot_do_safely() {
    let app = spawn_with("roster-refuse", runtime()).await;
    let refused = |out: &std::process::Output| {
        assert!(!out.status.success(), "{}", stdout(out));
        stderr(out)
    };
    std::fs::write(app.runtime_keys().join("k"), "key-x").unwrap();
    let err = refused(&app.cli(&["channel", "remove", "store-eu"]).await);
    assert!(err.contains("configured in the file"), "{err}");
    let err = refused(&add(&app, "store-eu", "1", "k").await);
    assert!(err.contains("configured in the file"), "{err}");
    // A key file outside the directory every replica reads from.
    let outside = app.config_path.with_file_name("outside.key");
    std::fs::write(&outside, "key-out").unwrap();
    let err = refused(&add(&app, "shop-x", "1", outside.to_str().unwrap()).await);
    assert!(err.contains("must be in worker.channel_keys_dir"), "{err}");
    let err = refused(&add(&app, "shop-x", "1", "missing").await);
    assert!(err.contains("missing"), "{err}");
    let err = refused(&add(&app, "Shop X", "1", "k").await);
    assert!(err.contains("a-z, 0-9"), "{err}");
    let err = refused(&add(&app, "shop-x", "0", "k").await);
    assert!(err.contains("rate 0"), "{err}");
    let err = refused(&app.cli(&["channel", "remove", "shop-never"]).await);
    assert!(err.contains("not a channel added at run time"), "{err}");
    // A hand-written record naming a file outside the directory is refused
    // by every replica; the one it serves are untouched.
    let record = serde_json::json!({"channel": "shop-evil", "op": "add", "rate": 1.0,
                                    "key": "../../etc/passwd", "at": "t", "by": "x"});
    app.publish_raw(
        "",
        &app.queue("control"),
        record.to_string().as_bytes(),
        Default::default(),
    )
    .await;
    eventually(Duration::from_secs(2), "the record refused", || async {
        (app.metric("octopods_control_rejected_total{reason=\"out_of_range\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        metric_at(&app.http.to_string(), &budget("shop-evil")).await,
        None
    );
    app.shutdown().await;
}

/// The way a deployment moves a channel from its config file to the roster
/// (docs/operations.md, Adding and removing channels): take it out of the
/// file, restart the replicas, `channel add` it. Its queue and binding stay
/// throughout, so jobs queued before and published in between wait there
/// and are all sent, once, after the add.
#[tokio::test]
async fn a_channel_moved_from_the_file_to_run_time_keeps_its_queued_jobs() {
    let mut app = spawn_with(
        "roster-move",
        Options {
            channels: vec![TestChannel::new("store-eu"), TestChannel::new("shop-old")],
            ..runtime()
        },
    )
    .await;
    app.stop_worker().await;
    app.publish_many(
        "shop-old",
        (0..3).map(|i| job_for("shop-old", &format!("before-{i}"))),
    )
    .await;
    // The file without shop-old, and the replica restarted on it.
    app.rewrite_config(&runtime());
    app.start_worker().await;
    app.publish_many("shop-old", [job_for("shop-old", "between")])
        .await;
    assert_eq!(
        app.depth("jobs.shop-old").await,
        4,
        "served by no replica, still routed to its queue"
    );
    assert_eq!(app.depth("unroutable").await, 0);
    assert!(app.requests().is_empty());

    let key = "key-shop-old-moved";
    std::fs::write(app.runtime_keys().join("shop-old.key"), key).unwrap();
    app.added.push("shop-old".into());
    ok(&add(&app, "shop-old", "50", "shop-old.key").await);
    assert_eq!(
        sent_ids(&app, "shop-old", 4).await,
        ["before-0", "before-1", "before-2", "between"]
    );
    assert_eq!(requests_with_key(&app, key).len(), 4, "with the added key");
    assert_eq!(app.depth("jobs.shop-old").await, 0);
    app.shutdown().await;
}

/// A replica that starts with channels added at run time declares their
/// queues together. One queue RabbitMQ refuses (deleted and declared again
/// by someone else, as a classic queue) keeps only its own channel out of
/// the session: the others are declared one by one and served.
#[tokio::test]
async fn an_added_channel_whose_queue_rabbitmq_refuses_keeps_only_itself_out() {
    let mut app = spawn_with("roster-refused", runtime()).await;
    for name in ["shop-a", "shop-b", "shop-c"] {
        std::fs::write(app.runtime_keys().join(format!("{name}.key")), "k\n").unwrap();
        app.added.push(name.into());
        ok(&add(&app, name, "50", &format!("{name}.key")).await);
    }
    app.stop_worker().await;
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let refused = app.queue("jobs.shop-b");
    ch.queue_delete(refused.as_str().into(), Default::default())
        .await
        .unwrap();
    ch.queue_declare(
        refused.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let body = serde_json::to_vec(&job_for("shop-b", "b-1")).unwrap();
    app.publish_raw("", &refused, &body, Default::default())
        .await;
    app.publish_many("shop-a", [job_for("shop-a", "a-1")]).await;
    app.publish_many("shop-c", [job_for("shop-c", "c-1")]).await;

    app.start_worker().await;
    let mut sent = Vec::new();
    for _ in 0..2 {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.push(e["job_id"].as_str().unwrap().to_owned());
    }
    sent.sort();
    assert_eq!(sent, ["a-1", "c-1"]);
    let held = ch
        .queue_declare(
            refused.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (held.message_count(), held.consumer_count()),
        (1, 0),
        "shop-b's job waits in its queue, unserved"
    );
    drop(conn.close(200, "OK".into()).await);
    app.shutdown().await;
}
