//! One test per row of docs/contract.md §4: publish a job, read the event, the dead
//! letter (bytes and headers) and what the sandbox received.

use std::time::Duration;

use lapin::BasicProperties;
use octopods_worker::sandbox::{Fault, Script};
use serde_json::{Value, json};

use crate::helpers::*;

/// Checks the common shape of a `dead_lettered` event.
fn assert_dead_event(e: &Value, job_id: Option<&str>, reason: &str, attempts: u64) {
    assert_eq!(e["event"], "dead_lettered", "{e}");
    assert_eq!(e["job_id"], json!(job_id), "{e}");
    assert_eq!(e["channel"], "store-eu");
    assert_eq!(e["reason"], reason, "{e}");
    assert_eq!(e["attempts"], attempts, "{e}");
    assert!(
        e["failed_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{e}"
    );
}

/// Checks that Octopods got exactly `n` requests for `job`: the job's payload
/// and the channel's key.
fn assert_sandbox_got(app: &TestApp, job: &Value, n: usize) {
    let reqs = app.requests();
    assert_eq!(reqs.len(), n, "requests to Octopods");
    for r in &reqs {
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            expected_payload(job)
        );
        assert_eq!(r.auth.as_deref(), Some("key-store-eu-s3cret"));
    }
}

/// Checks the dead-letter copy: untouched bytes, routing key, headers.
fn assert_dead_letter(d: &DeadLetter, body: &[u8], reason: &str, attempts: i64) {
    assert_eq!(d.body, body, "dead letter body must be byte-identical");
    assert_eq!(d.routing_key, format!("{reason}.store-eu"));
    assert_eq!(d.text("x-octopods-reason").as_deref(), Some(reason));
    assert_eq!(d.text("x-octopods-channel").as_deref(), Some("store-eu"));
    assert_eq!(d.int("x-octopods-attempts"), Some(attempts));
    assert_eq!(d.int("x-octopods-replays"), Some(0));
    assert!(d.text("x-octopods-failed-at").is_some());
    assert!(d.text("x-octopods-error").is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn button_job_is_sent_with_the_exact_payload_and_key() {
    let app = spawn_worker("sent-button").await;
    let job = button_job("order-1/confirm");
    app.publish_job(&job).await;

    let (e, props, routing_key) = app.next_event_with_props().await;
    assert_eq!(routing_key, "sent.store-eu");
    assert_eq!(e["event"], "sent");
    assert_eq!(e["job_id"], "order-1/confirm");
    assert_eq!(e["channel"], "store-eu");
    assert_eq!(e["phone_number"], PHONE);
    assert_eq!(e["attempts"], 1);
    assert_eq!(e["metadata"], json!({"order_id": "1234"}));
    assert!(e["message_id"].as_str().unwrap().starts_with("msg_"), "{e}");
    assert!(
        e["channel_message_id"]
            .as_str()
            .unwrap()
            .starts_with("wamid."),
        "{e}"
    );
    assert!(e["request_id"].as_str().unwrap().starts_with("req_"), "{e}");
    let url = e["message_status_url"].as_str().unwrap();
    assert!(url.ends_with(e["message_id"].as_str().unwrap()), "{url}");
    assert_eq!(
        e["sent_at"].as_str().unwrap().len(),
        "2026-11-24T10:00:01.234Z".len()
    );
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.as_str()),
        Some("order-1/confirm")
    );
    assert_eq!(props.delivery_mode(), &Some(2));

    let reqs = app.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].auth.as_deref(), Some("key-store-eu-s3cret"));
    let sent: Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(sent, expected_payload(&job));
    assert_eq!(app.depth("dead").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn list_job_is_sent() {
    let app = spawn_worker("sent-list").await;
    let job = list_job("order-2/confirm");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["job_id"], "order-2/confirm");
    assert_eq!(e["metadata"], json!({"order_id": "5678"}));
    let reqs = app.requests();
    assert_eq!(
        serde_json::from_str::<Value>(&reqs[0].body).unwrap(),
        expected_payload(&job)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn correlation_id_of_the_job_is_kept_on_the_event() {
    let app = spawn_worker("correlation").await;
    let body = serde_json::to_vec(&button_job("j-corr")).unwrap();
    let props = BasicProperties::default().with_correlation_id("trace-42".into());
    app.publish_bytes("store-eu", &body, props).await;
    let (_, props, _) = app.next_event_with_props().await;
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.as_str()),
        Some("trace-42")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn locally_invalid_job_is_dead_lettered_without_a_request() {
    let app = spawn_worker("validation-local").await;
    let mut job = button_job("bad-1");
    job["waba_interactive_message"]["action"]["buttons"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "reply", "reply": {"id": "four", "title": "Four"}}));
    let body = app.publish_job(&job).await;

    let e = app.next_event().await;
    assert_dead_event(&e, Some("bad-1"), "validation", 1);
    assert_eq!(
        e["error"],
        "waba_interactive_message.action.buttons: 4 buttons, limit 3"
    );
    assert_eq!(e["http_status"], Value::Null);
    assert_eq!(e["octopods_error"], Value::Null);
    assert_eq!(e["metadata"], json!({"order_id": "1234"}));
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "validation", 1);
    assert_eq!(
        d.text("x-octopods-error").as_deref(),
        Some("waba_interactive_message.action.buttons: 4 buttons, limit 3")
    );
    assert_eq!(d.header("x-octopods-http-status"), None);
    assert!(
        app.requests().is_empty(),
        "no HTTP call for a job that can never succeed"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn channel_mismatch_is_a_validation_error() {
    let app = spawn_worker("channel-mismatch").await;
    let mut job = button_job("mismatch");
    job["channel"] = json!("store-us");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("mismatch"), "validation", 1);
    assert!(e["error"].as_str().unwrap().starts_with("channel:"), "{e}");
    assert!(app.requests().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn octopods_validation_error_is_dead_lettered_with_its_code() {
    let app = spawn_worker("validation-remote").await;
    app.script(Script::for_phone(PHONE, vec![Fault::Validation]));
    let job = button_job("remote-bad");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("remote-bad"), "validation", 1);
    assert_eq!(e["http_status"], 400);
    assert_eq!(e["octopods_error"]["error_code"], 7);
    assert!(
        e["octopods_error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(
        e["octopods_error"]["error"]
            .as_str()
            .unwrap()
            .starts_with("VALIDATION:")
    );
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "validation", 1);
    assert_eq!(d.int("x-octopods-http-status"), Some(400));
    assert_eq!(d.int("x-octopods-error-code"), Some(7));
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn body_that_is_not_json_is_malformed_and_kept_byte_for_byte() {
    let app = spawn_worker("malformed").await;
    let body = b"\xff\xfe not json at all {".to_vec();
    app.publish_bytes("store-eu", &body, BasicProperties::default())
        .await;
    let e = app.next_event().await;
    assert_dead_event(&e, None, "malformed", 1);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "malformed", 1);
    assert!(app.requests().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_malformed() {
    let app = spawn_worker("oversized").await;
    let mut job = button_job("big");
    job["metadata"] = json!({"pad": "x".repeat(70 * 1024)});
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, None, "malformed", 1);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "malformed", 1);
    app.shutdown().await;
}

#[tokio::test]
async fn closed_window_from_last_inbound_at_is_dead_lettered_without_a_request() {
    let app = spawn_worker("window-local").await;
    let mut job = button_job("late");
    let old = time::OffsetDateTime::now_utc() - time::Duration::hours(25);
    job["last_inbound_at"] = json!(
        old.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("late"), "window", 1);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "window", 1);
    assert!(app.requests().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn window_reported_by_octopods_is_dead_lettered_as_window() {
    let app = spawn_worker("window-remote").await;
    app.script(Script::for_phone(PHONE, vec![Fault::Window]));
    let job = button_job("w");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("w"), "window", 1);
    assert_eq!(e["octopods_error"]["error_code"], 8);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "window", 1);
    assert_eq!(d.int("x-octopods-error-code"), Some(8));
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn expired_job_is_dead_lettered_without_a_request() {
    let app = spawn_worker("expired").await;
    let mut job = button_job("exp");
    job["expires_at"] = json!("2020-01-01T00:00:00Z");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("exp"), "expired", 1);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "expired", 1);
    assert!(app.requests().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_key_is_unauthorized() {
    let app = spawn_with(
        "unauthorized",
        Options {
            sandbox_keys: vec!["some-other-key".into()],
            ..Options::default()
        },
    )
    .await;
    let job = button_job("u");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("u"), "unauthorized", 1);
    assert_eq!(e["http_status"], 401);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "unauthorized", 1);
    assert_eq!(d.int("x-octopods-http-status"), Some(401));
    // The key was sent, and is nowhere in what the worker published.
    assert_eq!(
        app.requests()[0].auth.as_deref(),
        Some("key-store-eu-s3cret")
    );
    assert!(!e.to_string().contains("s3cret"));
    assert!(!format!("{:?}", d.properties).contains("s3cret"));
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn deprecated_key_is_unauthorized() {
    let app = spawn_worker("deprecated-key").await;
    app.script(Script::for_phone(PHONE, vec![Fault::DeprecatedKey]));
    let job = button_job("dk");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("dk"), "unauthorized", 1);
    assert_eq!(e["http_status"], 400);
    assert_eq!(e["octopods_error"]["error_code"], 6);
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn interactive_not_enabled_is_forbidden() {
    let app = spawn_worker("forbidden").await;
    app.script(Script::for_phone(PHONE, vec![Fault::NotEnabled]));
    let job = button_job("f");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("f"), "forbidden", 1);
    assert_eq!(e["http_status"], 403);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "forbidden", 1);
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn other_4xx_is_rejected() {
    let app = spawn_worker("rejected").await;
    app.script(Script::for_phone(
        PHONE,
        vec![Fault::Status {
            status: 409,
            error_code: Some(77),
            error: Some("CONFLICT: already queued".into()),
        }],
    ));
    let job = button_job("r");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("r"), "rejected", 1);
    assert_eq!(e["http_status"], 409);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "rejected", 1);
    assert_sandbox_got(&app, &job, 1);
    app.shutdown().await;
}

/// Two immediate attempts fail, the job waits in the delay queue, and the
/// third attempt, on the next delivery, succeeds.
#[tokio::test]
async fn two_503s_then_sent_takes_three_attempts() {
    let app = spawn_worker("retry-then-sent").await;
    app.script(Script::for_phone(
        PHONE,
        vec![
            Fault::Outage { status: Some(503) },
            Fault::Outage { status: Some(503) },
        ],
    ));
    let job = button_job("flaky");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["attempts"], 3);
    let reqs = app.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    for r in &reqs {
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            expected_payload(&job)
        );
        assert_eq!(r.auth.as_deref(), Some("key-store-eu-s3cret"));
    }
    assert_eq!(app.depth("dead").await, 0);
    app.shutdown().await;
}

/// With several delay queues, each hand-off goes to exactly one of them: the
/// job is attempted exactly as often as scripted and yields one event.
#[tokio::test]
async fn each_durable_retry_goes_to_exactly_one_delay_queue() {
    let app = spawn_with(
        "retry-one-queue",
        Options {
            extra_toml: "[retry]\nmax_attempts = 6\nimmediate_attempts = 2\ndelays = [\"300ms\", \"600ms\", \"900ms\"]\n\
                         initial_interval = \"20ms\"\nmax_interval = \"100ms\"\n"
                .into(),
            ..Options::default()
        },
    )
    .await;
    let outage = || Fault::Outage { status: Some(503) };
    app.script(Script::for_phone(
        PHONE,
        vec![outage(), outage(), outage(), outage()],
    ));
    let job = button_job("one-queue");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["attempts"], 5);
    // Two hand-offs (300 ms, then 600 ms), five requests, one event, and the
    // delay queues empty: a copy in a second delay queue would show here.
    for (delay, n) in [("300ms", 1.0), ("600ms", 1.0), ("900ms", 0.0)] {
        let series =
            format!("octopods_delayed_retries_total{{channel=\"store-eu\",delay=\"{delay}\"}}");
        assert_eq!(app.metric(&series).await, n, "{series}");
    }
    eventually(
        Duration::from_secs(3),
        "the delay queues to be empty",
        || async {
            let mut total = 0;
            for d in ["300ms", "600ms", "900ms"] {
                total += app.depth(&format!("retry.{d}")).await;
            }
            (total == 0).then_some(())
        },
    )
    .await;
    assert_sandbox_got(&app, &job, 5);
    assert!(app.try_next_event().await.is_none(), "one event per job");
    app.shutdown().await;
}

#[tokio::test]
async fn persistent_outage_exhausts_retries() {
    let app = spawn_with(
        "retries-exhausted",
        Options {
            extra_toml: TEST_RETRY.replace("max_attempts = 4", "max_attempts = 3"),
            ..Options::default()
        },
    )
    .await;
    app.script(Script {
        phone: Some(PHONE.into()),
        faults: vec![Fault::Outage { status: Some(502) }],
        repeat: 0,
        for_ms: None,
    });
    let job = button_job("down");
    let body = app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_dead_event(&e, Some("down"), "retries_exhausted", 3);
    assert_eq!(e["http_status"], 502);
    let d = app.next_dead_letter().await;
    assert_dead_letter(&d, &body, "retries_exhausted", 3);
    assert_eq!(app.requests().len(), 3);
    assert_sandbox_got(&app, &job, 3);
    app.shutdown().await;
}

#[tokio::test]
async fn rate_limited_answer_is_retried_after_retry_after() {
    let app = spawn_worker("retry-after").await;
    app.script(Script::for_phone(
        PHONE,
        vec![Fault::RateLimited {
            retry_after: Some(1),
        }],
    ));
    let job = button_job("throttled");
    app.publish_job(&job).await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["attempts"], 2);
    let reqs = app.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 200]
    );
    let gap = reqs[1].at_ms - reqs[0].at_ms;
    assert!(
        gap >= 1000,
        "second attempt came {gap} ms after the 429, Retry-After said 1 s"
    );
    assert_eq!(
        app.metric("octopods_retries_total{cause=\"rate_limited\",channel=\"store-eu\"}")
            .await,
        1.0
    );
    assert_sandbox_got(&app, &job, 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_holds_back_the_whole_channel() {
    let app = spawn_worker("429-channel").await;
    app.script(Script::for_phone(
        PHONE,
        vec![Fault::RateLimited {
            retry_after: Some(1),
        }],
    ));
    app.publish_job(&button_job("first")).await;
    eventually(Duration::from_secs(5), "the 429", || async {
        (!app.requests().is_empty()).then_some(())
    })
    .await;
    let mut other = button_job("second");
    other["destination_phone"] = json!("+15550001111");
    app.publish_job(&other).await;
    for _ in 0..2 {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    let reqs = app.requests();
    let throttled_at = reqs[0].at_ms;
    let other_at = app.requests_for("+15550001111")[0].at_ms;
    assert!(
        other_at >= throttled_at + 1000,
        "another job of the channel went out {} ms after the 429 (Retry-After: 1 s)",
        other_at - throttled_at
    );
    app.shutdown().await;
}

#[tokio::test]
async fn channel_rate_holds() {
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 10.0;
    channel.burst = 1;
    let app = spawn_with(
        "rate",
        Options {
            channels: vec![channel],
            ..Options::default()
        },
    )
    .await;
    for i in 0..30 {
        app.publish_job(&button_job(&format!("rate-{i}"))).await;
    }
    let mut sent = 0;
    while sent < 30 {
        assert_eq!(app.next_event().await["event"], "sent");
        sent += 1;
    }
    let reqs = app.requests();
    assert_eq!(reqs.len(), 30);
    let span = Duration::from_millis(reqs[29].at_ms - reqs[0].at_ms);
    // 30 requests at 10/s with a burst of 1: the last is at least 2.9 s after
    // the first; allow scheduling slack down to 2.5 s.
    assert!(
        span >= Duration::from_millis(2500),
        "30 requests took only {span:?}"
    );
    // And never more than rate·t + burst in any window.
    for (i, r) in reqs.iter().enumerate() {
        let in_window = reqs[i..]
            .iter()
            .take_while(|o| o.at_ms < r.at_ms + 1000)
            .count();
        assert!(
            in_window <= 11,
            "{in_window} requests within 1 s starting at request {i}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn job_for_an_unknown_channel_lands_in_unroutable() {
    let app = spawn_worker("unroutable").await;
    let body = serde_json::to_vec(&button_job("nowhere")).unwrap();
    app.publish_bytes("store-mars", &body, BasicProperties::default())
        .await;
    let depth = eventually(Duration::from_secs(5), "the job in unroutable", || async {
        let d = app.depth("unroutable").await;
        (d == 1).then_some(d)
    })
    .await;
    assert_eq!(depth, 1);
    app.shutdown().await;
}

/// A channel configured above what Octopods accepts: Octopods' 429s pause the
/// channel for their Retry-After, and every job still ends sent.
#[tokio::test]
async fn octopods_rate_limit_above_the_budget_slows_the_channel_and_loses_nothing() {
    const N: usize = 20;
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 20.0;
    channel.burst = 5;
    let app = spawn_with(
        "octopods-429",
        Options {
            channels: vec![channel],
            sandbox_rate_limit: Some(5),
            extra_toml: TEST_RETRY
                .replace("max_attempts = 4", "max_attempts = 10")
                .replace("[\"300ms\"]", "[\"1s\"]"),
            delivery_limit: Some(30),
            ..Options::default()
        },
    )
    .await;
    for i in 0..N {
        app.publish_job(&button_job(&format!("burst-{i}"))).await;
    }
    let mut sent = std::collections::BTreeSet::new();
    while sent.len() < N {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.insert(e["job_id"].as_str().unwrap().to_owned());
    }
    let throttled = app.requests().iter().filter(|r| r.status == 429).count();
    assert!(throttled > 0, "the sandbox never throttled");
    assert_eq!(
        app.metric("octopods_retries_total{cause=\"rate_limited\",channel=\"store-eu\"}")
            .await,
        throttled as f64
    );
    eprintln!("Octopods limit 5/s under a 20/s budget: {N} sent, {throttled} answers 429");
    app.shutdown().await;
}
