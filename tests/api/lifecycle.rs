//! Lifecycle: graceful shutdown settles what is in flight.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn shutdown_finishes_and_acks_jobs_in_flight() {
    let mut app = spawn_with(
        "graceful",
        Options {
            sandbox_latency: Duration::from_millis(700),
            ..Options::default()
        },
    )
    .await;
    for i in 0..5 {
        app.publish_job(&button_job(&format!("inflight-{i}"))).await;
    }
    eventually(Duration::from_secs(10), "5 requests in flight", || async {
        (app.requests().len() == 5).then_some(())
    })
    .await;
    app.stop_worker().await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.push(e["job_id"].as_str().unwrap().to_owned());
    }
    sent.sort();
    assert_eq!(
        sent,
        (0..5).map(|i| format!("inflight-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        app.depth("jobs.store-eu").await,
        0,
        "finished jobs must be acked, not redelivered"
    );
    assert_eq!(app.depth("results").await, 0, "exactly one event per job");
    app.shutdown().await;
}
