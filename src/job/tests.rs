use serde_json::{Value, json};
use time::macros::datetime;

use super::*;

fn job() -> Value {
    json!({
        "job_id": "order-1234/delivery-confirm",
        "destination_phone": "+15551234567",
        "waba_interactive_message": {
            "type": "button", "body": {"text": "Did your order arrive today?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes, received"}}]}
        },
        "open_intercom_conversation": true,
        "intercom_teammate_id": "4711",
        "metadata": {"order_id": "1234"}
    })
}

fn parse(v: &Value) -> Result<Job, Rejection> {
    Job::parse(v.to_string().as_bytes(), "store-eu", Provider::CloudApi)
}

fn rejected(v: &Value) -> Rejection {
    parse(v).expect_err("expected a rejection")
}

#[test]
fn valid_job_builds_the_octopods_body() {
    let j = parse(&job()).unwrap();
    assert_eq!(j.id.as_str(), "order-1234/delivery-confirm");
    let body: Value = serde_json::from_slice(&j.request_body).unwrap();
    assert_eq!(
        body,
        json!({
            "destination_phone": "+15551234567",
            "waba_interactive_message": job()["waba_interactive_message"],
            "open_intercom_conversation": true,
            "intercom_teammate_id": "4711"
        })
    );
}

#[test]
fn integer_teammate_id_passes_as_given() {
    let mut v = job();
    v["intercom_teammate_id"] = json!(4711);
    let body: Value = serde_json::from_slice(&parse(&v).unwrap().request_body).unwrap();
    assert_eq!(body["intercom_teammate_id"], json!(4711));
    v["intercom_teammate_id"] = json!(true);
    assert_eq!(rejected(&v).reason, Reason::Validation);
}

#[test]
fn unknown_top_level_field_is_a_validation_error() {
    let mut v = job();
    v["destination_phon"] = json!("+15551234567");
    let r = rejected(&v);
    assert_eq!(r.reason, Reason::Validation);
    assert_eq!(r.message, "destination_phon: unknown field");
    assert_eq!(
        r.echo.job_id.as_deref(),
        Some("order-1234/delivery-confirm")
    );
    assert_eq!(r.echo.metadata, Some(json!({"order_id": "1234"})));
}

#[test]
fn non_json_and_oversized_bodies_are_malformed() {
    let r = Job::parse(b"{not json", "store-eu", Provider::CloudApi).unwrap_err();
    assert_eq!(r.reason, Reason::Malformed);
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let r = Job::parse(&big, "store-eu", Provider::CloudApi).unwrap_err();
    assert_eq!(r.reason, Reason::Malformed);
    assert_eq!(
        r.message,
        format!("body: 65537 bytes, limit {MAX_BODY_BYTES}")
    );
}

#[test]
fn body_of_exactly_64_kib_is_accepted() {
    let mut s = job().to_string();
    while s.len() < MAX_BODY_BYTES {
        s.push(' ');
    }
    assert!(Job::parse(s.as_bytes(), "store-eu", Provider::CloudApi).is_ok());
    s.push(' ');
    let r = Job::parse(s.as_bytes(), "store-eu", Provider::CloudApi).unwrap_err();
    assert_eq!(r.reason, Reason::Malformed);
}

#[test]
fn json_that_is_not_an_object_is_invalid() {
    let r = Job::parse(b"[1,2]", "store-eu", Provider::CloudApi).unwrap_err();
    assert_eq!(r.reason, Reason::Validation);
}

#[test]
fn job_id_of_200_characters_passes_and_201_fails() {
    let mut v = job();
    v["job_id"] = json!("ü".repeat(200));
    assert!(parse(&v).is_ok());
    v["job_id"] = json!("ü".repeat(201));
    assert_eq!(rejected(&v).message, "job_id: 201 characters, limit 200");
    v["job_id"] = json!("");
    assert_eq!(rejected(&v).message, "job_id: empty");
    v.as_object_mut().unwrap().remove("job_id");
    assert_eq!(rejected(&v).message, "job_id: required");
}

#[test]
fn phone_must_be_e164_with_8_to_15_digits() {
    for good in ["+15551234", "+123456789012345", "+491701234567"] {
        assert!(Phone::parse(good).is_some(), "{good}");
    }
    for bad in [
        "15551234567",
        "+1555123",
        "+1234567890123456",
        "+05551234567",
        "+1555 123 4567",
        "+",
    ] {
        assert!(Phone::parse(bad).is_none(), "{bad}");
    }
    let mut v = job();
    v["destination_phone"] = json!("+1555123");
    let r = rejected(&v);
    assert!(r.message.starts_with("destination_phone:"), "{}", r.message);
}

#[test]
fn rejection_messages_never_carry_the_full_phone() {
    let mut v = job();
    v["destination_phone"] = json!("+1555123456789012");
    let r = rejected(&v);
    assert!(!r.message.contains("1555123456789012"), "{}", r.message);
}

#[test]
fn phone_display_is_masked() {
    let p = Phone::parse("+15551234567").unwrap();
    assert_eq!(p.to_string(), "+1555***4567");
    assert_eq!(format!("{p:?}"), "Phone(+1555***4567)");
}

#[test]
fn channel_field_must_match_the_queue() {
    let mut v = job();
    v["channel"] = json!("store-eu");
    assert!(parse(&v).is_ok());
    v["channel"] = json!("store-us");
    assert_eq!(
        rejected(&v).message,
        "channel: \"store-us\" does not match the queue's channel \"store-eu\""
    );
}

#[test]
fn metadata_of_4_kib_passes_and_more_fails() {
    let mut v = job();
    // {"k":"…"} is 8 bytes of framing.
    v["metadata"] = json!({"k": "x".repeat(MAX_METADATA_BYTES - 8)});
    assert!(parse(&v).is_ok());
    v["metadata"] = json!({"k": "x".repeat(MAX_METADATA_BYTES - 7)});
    assert_eq!(
        rejected(&v).message,
        "metadata: 4097 bytes serialized, limit 4096"
    );
    v["metadata"] = json!([1]);
    assert_eq!(rejected(&v).message, "metadata: expected an object");
}

#[test]
fn interactive_errors_carry_the_full_path() {
    let mut v = job();
    v["waba_interactive_message"]["action"]["buttons"][0]["reply"]["title"] = json!("x".repeat(21));
    assert_eq!(
        rejected(&v).message,
        "waba_interactive_message.action.buttons[0].reply.title: 21 characters, limit 20"
    );
}

#[test]
fn bad_timestamps_are_validation_errors() {
    let mut v = job();
    v["expires_at"] = json!("tomorrow");
    assert_eq!(
        rejected(&v).message,
        "expires_at: \"tomorrow\" is not an RFC 3339 timestamp"
    );
}

#[test]
fn window_closes_24_hours_after_last_inbound() {
    let mut v = job();
    v["last_inbound_at"] = json!("2026-11-24T09:12:00Z");
    let j = parse(&v).unwrap();
    assert!(
        j.check_deadlines(
            datetime!(2026-11-25 09:11:59 UTC),
            crate::outcome::Via::Interactive
        )
        .is_ok()
    );
    let (reason, msg) = j
        .check_deadlines(
            datetime!(2026-11-25 09:12:00 UTC),
            crate::outcome::Via::Interactive,
        )
        .unwrap_err();
    assert_eq!(reason, Reason::Window);
    assert!(
        msg.starts_with("last_inbound_at: 2026-11-24T09:12:00Z"),
        "{msg}"
    );
}

#[test]
fn expired_job_is_expired() {
    let mut v = job();
    v["expires_at"] = json!("2026-11-24T18:00:00Z");
    let j = parse(&v).unwrap();
    assert!(
        j.check_deadlines(
            datetime!(2026-11-24 17:59:59 UTC),
            crate::outcome::Via::Interactive
        )
        .is_ok()
    );
    let (reason, _) = j
        .check_deadlines(
            datetime!(2026-11-24 18:00:00 UTC),
            crate::outcome::Via::Interactive,
        )
        .unwrap_err();
    assert_eq!(reason, Reason::Expired);
}

#[test]
fn twilio_channel_rejects_flow_jobs() {
    let mut v = job();
    v["waba_interactive_message"] = json!({"type": "flow", "body": {"text": "x"}, "action": {"name": "flow",
        "parameters": {"flow_message_version": "3", "flow_id": "1", "flow_cta": "Go"}}});
    assert!(Job::parse(v.to_string().as_bytes(), "c", Provider::CloudApi).is_ok());
    let r = Job::parse(v.to_string().as_bytes(), "c", Provider::Twilio).unwrap_err();
    assert_eq!(r.reason, Reason::Validation);
}

#[test]
fn timestamps_at_the_calendar_edges_give_a_clear_outcome_not_a_panic() {
    let now = time::macros::datetime!(2026-11-25 10:00 UTC);
    for (field, value) in [
        ("last_inbound_at", "9999-12-31T23:59:59Z"),
        ("expires_at", "9999-12-31T23:59:59Z"),
        ("last_inbound_at", "0000-01-01T00:00:00Z"),
        ("expires_at", "0000-01-01T00:00:00Z"),
        ("last_inbound_at", "9999-12-31T23:59:59.999999999+23:59"),
    ] {
        let mut j = serde_json::json!({"job_id": "j", "destination_phone": "+15551234567",
            "waba_interactive_message": crate::job::delivery_confirmation()});
        j[field] = serde_json::json!(value);
        match Job::parse(j.to_string().as_bytes(), "c", Provider::CloudApi) {
            Ok(job) => drop(job.check_deadlines(now, crate::outcome::Via::Interactive)),
            Err(r) => assert_eq!(
                r.reason,
                Reason::Validation,
                "{field}={value}: {}",
                r.message
            ),
        }
    }
}

#[test]
fn a_jobs_choices_are_its_buttons_or_list_rows_in_order() {
    let ids = |j: &Job| -> Vec<String> { j.choices().into_iter().map(|c| c.id).collect() };
    let buttons = parse(&job()).unwrap();
    assert_eq!(ids(&buttons), ["yes"]);
    let mut v = job();
    v["waba_interactive_message"] = json!({"type": "list", "body": {"text": "?"},
        "action": {"button": "Choose", "sections": [
            {"title": "a", "rows": [{"id": "r1", "title": "One"}]},
            {"title": "b", "rows": [{"id": "r2", "title": "Two"}, {"id": "r3", "title": "Three"}]}]}});
    assert_eq!(ids(&parse(&v).unwrap()), ["r1", "r2", "r3"]);
    v["waba_interactive_message"] = json!({"type": "product",
        "action": {"catalog_id": "c", "product_retailer_id": "p"}});
    assert!(parse(&v).unwrap().choices().is_empty());
}
