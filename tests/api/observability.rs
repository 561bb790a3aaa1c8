//! What SREs see: exact counters after known outcomes, readiness across a
//! broker connection loss, and no secrets or phone numbers in metrics.

use std::time::Duration;

use octopods_worker::sandbox::{Fault, Script};
use serde_json::json;

use crate::helpers::*;

const FLAKY: &str = "+15550000003";

#[tokio::test]
async fn counters_match_the_outcomes_exactly() {
    let app = spawn_worker("metrics").await;
    app.script(Script::for_phone(
        FLAKY,
        vec![
            Fault::Outage { status: Some(503) },
            Fault::Outage { status: Some(503) },
        ],
    ));
    for i in 0..4 {
        app.publish_job(&button_job(&format!("ok-{i}"))).await;
    }
    let mut flaky = button_job("flaky");
    flaky["destination_phone"] = json!(FLAKY);
    app.publish_job(&flaky).await;
    for i in 0..2 {
        let mut bad = button_job(&format!("bad-{i}"));
        bad["destination_phone"] = json!("12345");
        app.publish_job(&bad).await;
    }
    let mut late = button_job("late");
    late["last_inbound_at"] = json!("2020-01-01T00:00:00Z");
    app.publish_job(&late).await;

    let s = |name: &str, labels: &str| format!("octopods_{name}{{{labels}}}");
    let ch = "channel=\"store-eu\"";
    eventually(Duration::from_secs(15), "8 completed jobs", || async {
        let done = app
            .metric(&s(
                "jobs_completed_total",
                &format!("{ch},outcome=\"sent\""),
            ))
            .await
            + app
                .metric(&s(
                    "jobs_completed_total",
                    &format!("{ch},outcome=\"dead_lettered\""),
                ))
                .await;
        (done == 8.0).then_some(())
    })
    .await;

    let expect = [
        // 8 jobs, one of them delivered twice: after its 2 immediate
        // attempts it waited in the delay queue.
        (s("jobs_received_total", ch), 9.0),
        (
            s("delayed_retries_total", &format!("{ch},delay=\"300ms\"")),
            1.0,
        ),
        (
            s("jobs_completed_total", &format!("{ch},outcome=\"sent\"")),
            5.0,
        ),
        (
            s(
                "jobs_completed_total",
                &format!("{ch},outcome=\"dead_lettered\""),
            ),
            3.0,
        ),
        (
            s(
                "dead_lettered_total",
                &format!("{ch},reason=\"validation\""),
            ),
            2.0,
        ),
        (
            s("dead_lettered_total", &format!("{ch},reason=\"window\"")),
            1.0,
        ),
        (
            s("retries_total", &format!("cause=\"server_error\",{ch}")),
            2.0,
        ),
        (
            s("api_requests_total", &format!("{ch},status=\"200\"")),
            5.0,
        ),
        (
            s("api_requests_total", &format!("{ch},status=\"503\"")),
            2.0,
        ),
        (s("api_request_duration_seconds_count", ch), 7.0),
        (
            s(
                "job_duration_seconds_count",
                &format!("{ch},outcome=\"sent\""),
            ),
            5.0,
        ),
        (
            s(
                "job_duration_seconds_count",
                &format!("{ch},outcome=\"dead_lettered\""),
            ),
            3.0,
        ),
        (s("rate_limit_wait_seconds_count", ch), 7.0),
        (s("jobs_in_flight", ch), 0.0),
        ("octopods_broker_connected".into(), 1.0),
        ("octopods_broker_reconnects_total".into(), 0.0),
    ];
    let text = app.metrics().await;
    for (series, want) in expect {
        assert_eq!(app.metric(&series).await, want, "{series}\n{text}");
    }
    assert!(
        text.contains("octopods_worker_build_info{version=\""),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "an API key reached /metrics");
    assert!(
        !text.contains("5551234567") && !text.contains("5550000003"),
        "a phone number reached /metrics"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn readiness_follows_the_broker_connection() {
    let app = spawn_worker("readyz").await;
    let readyz = format!("http://{}/readyz", app.http);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", app.http))
            .await
            .unwrap()
            .status(),
        200
    );

    close_worker_connection(&app.prefix).await;
    eventually(Duration::from_secs(10), "/readyz to turn 503", || async {
        (reqwest::get(&readyz).await.ok()?.status() == 503).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "/readyz back to 200 after reconnecting",
        || async { (reqwest::get(&readyz).await.ok()?.status() == 200).then_some(()) },
    )
    .await;
    assert_eq!(app.metric("octopods_broker_reconnects_total").await, 1.0);
    assert_eq!(app.metric("octopods_broker_connected").await, 1.0);

    // And it still works.
    app.publish_job(&button_job("after-reconnect")).await;
    assert_eq!(app.next_event().await["event"], "sent");
    app.shutdown().await;
}
