//! Outside the 24-hour window (docs/contract.md §11): the job's approved template is
//! sent instead, whether the window is known closed locally or Octopods says
//! so; template failures have reasons of their own.

use std::time::Duration;

use octopods_worker::sandbox::{Fault, Script};
use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "key-store-eu-s3cret";

fn closed_window_job(id: &str, template_id: u64) -> Value {
    let mut j = button_job(id);
    j["last_inbound_at"] = json!("2026-01-01T09:00:00Z");
    j["fallback_template"] = json!({"template_id": template_id,
        "message_variables": ["Alex", "1234"], "destination_user_name": "Alex"});
    j
}

fn answer(status: u16, error: &str) -> Script {
    Script {
        phone: Some(PHONE.into()),
        faults: vec![Fault::Status {
            status,
            error_code: Some(99),
            error: Some(error.into()),
        }],
        repeat: 1,
        for_ms: None,
    }
}

#[tokio::test]
async fn a_closed_window_sends_the_template_with_the_exact_request() {
    let app = spawn_worker("template-local").await;
    app.publish_job(&closed_window_job("late-1", 539)).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["via"], "template");
    assert_eq!(e["template_id"], 539);
    assert_eq!(e["metadata"], json!({"order_id": "1234"}));
    let reqs = app.requests();
    assert_eq!(
        reqs.len(),
        1,
        "no interactive attempt: the window is known closed"
    );
    assert_eq!(reqs[0].path, "/api/v1/whatsapp/templates/539/messages");
    assert_eq!(reqs[0].auth.as_deref(), Some(KEY));
    let body: Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        json!({"destination_phone": PHONE, "message_variables": ["Alex", "1234"],
               "destination_user_name": "Alex", "open_intercom_conversation": true,
               "intercom_teammate_id": "4711"})
    );
    assert_eq!(
        app.metric("octopods_messages_sent_total{channel=\"store-eu\",via=\"template\"}")
            .await,
        1.0
    );
    // An interactive send says so too.
    app.publish_job(&button_job("on-time")).await;
    let e = app.next_event().await;
    assert_eq!(e["via"], "interactive", "{e}");
    assert!(e.get("template_id").is_none(), "{e}");
    app.shutdown().await;
}

#[tokio::test]
async fn octopods_reporting_the_window_closed_sends_the_template_in_the_same_delivery() {
    let app = spawn_worker("template-remote").await;
    app.script(Script {
        phone: Some(PHONE.into()),
        faults: vec![Fault::Window],
        repeat: 1,
        for_ms: None,
    });
    let mut job = button_job("remote-1");
    job["fallback_template"] = json!({"template_id": 539});
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["via"], "template");
    assert_eq!(e["attempts"], 2, "{e}");
    let paths: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/whatsapp/interactive",
            "/api/v1/whatsapp/templates/539/messages"
        ]
    );
    // One job, one event: a job published after it settles after it, so
    // every event of the first job is in the queue before the marker's.
    app.publish_job(&button_job("marker-1")).await;
    loop {
        let e = app.next_event().await;
        assert_ne!(e["job_id"], "remote-1", "a second event for one job: {e}");
        if e["job_id"] == "marker-1" {
            break;
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn each_template_failure_has_its_reason() {
    let app = spawn_worker("template-errors").await;
    // Unknown template: the sandbox's own TEMPLATE_NOT_EXIST.
    app.publish_job(&closed_window_job("t-unknown", 999)).await;
    let e = app.next_event().await;
    assert_eq!(e["reason"], "template", "{e}");
    assert_eq!(e["octopods_error"]["error_code"], 3);
    let d = app.next_dead_letter().await;
    assert_eq!(d.text("x-octopods-reason").as_deref(), Some("template"));
    let cases = [
        (400, "VARIABLES_SIZE: 2 given, 3 expected", "template"),
        (400, "(#132016) template disabled", "template"),
        (
            400,
            "(#131050) user stopped marketing messages",
            "opted_out",
        ),
        (400, "INVALID_HEADER: not an image", "template"),
    ];
    for (i, (status, text, reason)) in cases.iter().enumerate() {
        app.script(answer(*status, text));
        app.publish_job(&closed_window_job(&format!("t-{i}"), 539))
            .await;
        let e = app.next_event().await;
        assert_eq!(e["event"], "dead_lettered", "{text}: {e}");
        assert_eq!(e["reason"], *reason, "{text}: {e}");
        let d = app.next_dead_letter().await;
        assert_eq!(d.text("x-octopods-reason").as_deref(), Some(*reason));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_paused_template_waits_in_its_own_delay_queue_then_is_sent() {
    let app = spawn_with(
        "template-paused",
        Options {
            extra_toml: format!("{TEST_RETRY}paused_delay = \"1s\"\n"),
            ..Options::default()
        },
    )
    .await;
    app.script(answer(400, "(#132015) template paused for quality"));
    let started = std::time::Instant::now();
    app.publish_job(&closed_window_job("paused-1", 539)).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["via"], "template");
    assert_eq!(e["attempts"], 2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        app.metric("octopods_delayed_retries_total{channel=\"store-eu\",delay=\"1s\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("octopods_retries_total{cause=\"paused\",channel=\"store-eu\"}")
            .await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_invalid_fallback_is_a_validation_error_naming_the_field() {
    let app = spawn_worker("template-invalid").await;
    let mut job = closed_window_job("bad-fallback", 539);
    job["fallback_template"]["destination_user_name"] = json!("x".repeat(201));
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["reason"], "validation", "{e}");
    assert_eq!(
        e["error"],
        "fallback_template.destination_user_name: 201 characters, limit 200"
    );
    assert!(app.requests().is_empty());
    app.shutdown().await;
}
