//! One hostile input at a time, against every process that reads it: a
//! header nested deep enough to exhaust a stack, JSON nested past any
//! parser's bound — through the worker's replicas, the `dlq` tools and the
//! console, on the real broker.

use std::time::Duration;

use lapin::types::AMQPValue;
use serde_json::Value;

use crate::console::{dead_pages, spawn_console};
use crate::helpers::*;

#[tokio::test]
async fn a_header_nested_20000_deep_is_dead_lettered_and_no_replica_aborts() {
    let mut c = spawn_console("deep-header").await;
    // Three replicas, each its own process: an abort would show as an exit.
    c.app.stop_worker().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(BinaryWorker::start(&c.app.config_path).await);
    }
    // ≈ 100 KB: one header, arrays nested 20,000 deep (5,000 aborted).
    let body = serde_json::to_vec(&button_job("deep-1")).expect("json");
    let bomb = deep_header_table("x-bomb", 20_000);
    publish_with_raw_headers(&c.app.queue("jobs"), "store-eu", &bomb, &body).await;
    c.app.publish_job(&button_job("after-1")).await;

    let mut events = Vec::new();
    while events.len() < 2 {
        events.push(c.app.next_event().await);
    }
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["job_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {events:?}"))
    };
    assert_eq!(by_id("deep-1")["event"], "dead_lettered");
    assert_eq!(by_id("deep-1")["reason"], "malformed");
    assert_eq!(by_id("after-1")["event"], "sent");

    let dead = c.app.peek_all("dead").await;
    assert_eq!(dead.len(), 1);
    let error = dead[0].text("x-octopods-error").unwrap_or_default();
    assert!(
        error.contains("x-bomb") && error.contains("nested deeper than 64"),
        "{error}"
    );
    // The copy carries a flat marker, not the 64 levels that were kept.
    assert!(
        matches!(dead[0].header("x-bomb"), Some(AMQPValue::LongString(_))),
        "{:?}",
        dead[0].header("x-bomb")
    );

    // Every replica still runs and is ready, and still sends.
    for r in &mut replicas {
        assert!(
            r.child.try_wait().expect("try_wait").is_none(),
            "{}",
            r.tail(20)
        );
        let ready = reqwest::get(format!("http://{}/readyz", r.addr))
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200, "{}", r.tail(20));
    }
    for i in 0..6 {
        c.app.publish_job(&button_job(&format!("later-{i}"))).await;
    }
    for _ in 0..6 {
        assert_eq!(c.app.next_event().await["event"], "sent");
    }

    // The tools read the dead letter.
    let stats = ok(&c.app.cli(&["dlq", "stats", "--json"]).await);
    let stats: Value = serde_json::from_str(stats.trim()).expect("stats JSON");
    assert_eq!(stats["total"], 1, "{stats}");
    let listed = ok(&c.app.cli(&["dlq", "list", "--json"]).await);
    let line: Value = serde_json::from_str(listed.trim()).expect("one JSON line");
    assert_eq!(line["reason"], "malformed");
    let page = dead_pages(&c.base).await.message;
    assert!(page.contains("deep-1"), "{page}");
    for mut r in replicas {
        r.signal("TERM");
        assert!(r.wait_exit(Duration::from_secs(15)).await.success());
    }
    c.shutdown().await;
}

/// Arrays nested `depth` deep, as JSON text, with `inner` at the bottom.
fn nested_json(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn json_nested_100000_deep_is_malformed_and_every_tool_reads_it() {
    let c = spawn_console("deep-json").await;
    // In the body's metadata (not JSON the parser will accept whole) and
    // as a whole body that is nothing but depth.
    let mut text = serde_json::to_string(&button_job("deep-json-1")).expect("json");
    text.insert_str(
        1,
        &format!("\"metadata\":{{\"x\":{}}},", nested_json(100_000, "1")),
    );
    c.app
        .publish_bytes("store-eu", text.as_bytes(), Default::default())
        .await;
    c.app
        .publish_bytes(
            "store-eu",
            nested_json(100_000, "").as_bytes(),
            Default::default(),
        )
        .await;
    for _ in 0..2 {
        let e = c.app.next_event().await;
        assert_eq!(
            (e["event"].as_str(), e["reason"].as_str()),
            (Some("dead_lettered"), Some("malformed")),
            "{e}"
        );
    }
    eventually(Duration::from_secs(10), "2 dead letters", || async {
        (c.app.depth("dead").await == 2).then_some(())
    })
    .await;
    let stats = ok(&c.app.cli(&["dlq", "stats", "--json"]).await);
    let stats: Value = serde_json::from_str(stats.trim()).expect("stats JSON");
    assert_eq!(stats["total"], 2, "{stats}");
    let listed = ok(&c.app.cli(&["dlq", "list", "--json"]).await);
    assert_eq!(listed.lines().count(), 2);
    let exported = ok(&c.app.cli(&["dlq", "export"]).await);
    assert_eq!(exported.lines().count(), 2);
    dead_pages(&c.base).await;
    c.shutdown().await;
}
