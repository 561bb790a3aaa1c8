//! The contract's outcomes table, row by row, and the classification of
//! every answer family.

use serde_json::json;

use super::*;

fn err(code: i64, text: &str) -> Vec<u8> {
    json!({"request_id": "req_1", "error_code": code, "error": text})
        .to_string()
        .into_bytes()
}

fn kind(o: &Outcome) -> String {
    match o {
        Outcome::Sent(_) => "sent".into(),
        Outcome::Retry { cause, .. } => format!("retry:{}", cause.as_str()),
        Outcome::DeadLetter(r, _) => format!("dead:{}", r.as_str()),
    }
}

/// docs/contract.md §4 and `docs/octopods-api.md`, row by row.
#[test]
fn outcomes_table() {
    let ok = json!({"request_id": "req_1", "message_id": "msg_1", "message_status_url": "u",
                    "phone_number": "+15551234567", "channel_message_id": "wamid.1"})
    .to_string()
    .into_bytes();
    let rows: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        ("2xx with message_id", 200, ok.clone(), "sent"),
        ("201 with message_id", 201, ok, "sent"),
        (
            "2xx without message_id",
            200,
            b"{}".to_vec(),
            "retry:unreadable",
        ),
        ("2xx not JSON", 200, b"<html>".to_vec(), "retry:unreadable"),
        (
            "missing field",
            400,
            err(1, "ARGUMENT_MISSING: destination_phone"),
            "dead:validation",
        ),
        (
            "wrong shape",
            400,
            err(2, "TYPE_MISMATCH: action"),
            "dead:validation",
        ),
        (
            "limits",
            400,
            err(7, "VALIDATION: action.buttons: 4, limit 3"),
            "dead:validation",
        ),
        (
            "window by name",
            400,
            err(
                8,
                "OUTSIDE_WINDOW: the last inbound message is older than 24 hours; send a template",
            ),
            "dead:window",
        ),
        (
            "window by code only",
            400,
            err(8, "something"),
            "dead:window",
        ),
        (
            "window from Meta 131047",
            400,
            err(99, "(#131047) Re-engagement message"),
            "dead:window",
        ),
        (
            "unauthorized 401",
            401,
            err(5, "UNAUTHORIZED: unknown key"),
            "dead:unauthorized",
        ),
        (
            "unauthorized 401 no body",
            401,
            Vec::new(),
            "dead:unauthorized",
        ),
        (
            "deprecated key 400",
            400,
            err(6, "DEPRECATED_API_KEY: rotate"),
            "dead:unauthorized",
        ),
        (
            "forbidden 403",
            403,
            err(9, "INTERACTIVE_NOT_ENABLED: ask support"),
            "dead:forbidden",
        ),
        ("forbidden 403 no body", 403, Vec::new(), "dead:forbidden"),
        ("429", 429, Vec::new(), "retry:rate_limited"),
        ("408", 408, Vec::new(), "retry:timeout"),
        ("500", 500, b"oops".to_vec(), "retry:server_error"),
        ("502", 502, Vec::new(), "retry:server_error"),
        ("503", 503, Vec::new(), "retry:server_error"),
        ("504", 504, Vec::new(), "retry:server_error"),
        (
            "Meta 131056 pair rate",
            400,
            err(99, "(#131056) too many messages"),
            "retry:throttled",
        ),
        (
            "Meta 130429 throughput",
            400,
            err(99, "(#130429) rate limit hit"),
            "retry:throttled",
        ),
        (
            "Meta 131048 spam",
            400,
            err(99, "(#131048) spam rate limit"),
            "retry:throttled",
        ),
        (
            "Meta 131026 undeliverable",
            400,
            err(99, "(#131026) undeliverable"),
            "dead:rejected",
        ),
        (
            "unrecognised 400",
            400,
            err(42, "SOMETHING_NEW: ?"),
            "dead:validation",
        ),
        ("400 no body", 400, Vec::new(), "dead:validation"),
        ("404", 404, Vec::new(), "dead:rejected"),
        ("409", 409, err(77, "conflict"), "dead:rejected"),
        ("422", 422, Vec::new(), "dead:rejected"),
        ("302", 302, Vec::new(), "retry:unreadable"),
    ];
    for (name, status, body, want) in rows {
        assert_eq!(
            kind(&classify(Family::Interactive, status, None, &body)),
            want,
            "row {name}"
        );
    }
}

/// The attempts that got no answer, and the budget, in the same terms.
#[test]
fn outcomes_without_an_answer() {
    let rows: Vec<(&str, Outcome, &str)> = vec![
        (
            "timeout",
            transport(Transport::Timeout(Duration::from_secs(2))),
            "retry:timeout",
        ),
        (
            "connect error",
            transport(Transport::Connect),
            "retry:connect",
        ),
        (
            "broken answer",
            transport(Transport::Broken("reset".into())),
            "retry:connect",
        ),
        ("unusable key", unusable_key(), "dead:unauthorized"),
    ];
    for (name, outcome, want) in rows {
        assert_eq!(kind(&outcome), want, "row {name}");
    }
    let retry = RetryConfig {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(60),
        ..RetryConfig::default()
    };
    let f = || Failure::local("503");
    assert!(budget_spent(2, Duration::from_secs(59), &retry, f()).is_ok());
    let by_count = budget_spent(3, Duration::ZERO, &retry, f()).unwrap_err();
    assert_eq!(by_count.0, Reason::RetriesExhausted);
    assert!(
        by_count.1.message.starts_with("3 attempts: "),
        "{}",
        by_count.1.message
    );
    let by_time = budget_spent(1, Duration::from_secs(60), &retry, f()).unwrap_err();
    assert_eq!(by_time.0, Reason::RetriesExhausted);
}

/// docs/contract.md §11: the template family, by name first, then Meta codes,
/// then the template-family codes.
#[test]
fn template_outcomes_table() {
    let rows: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        (
            "unknown template",
            400,
            err(3, "TEMPLATE_NOT_EXIST: 999"),
            "dead:template",
        ),
        (
            "variables",
            400,
            err(4, "VARIABLES_SIZE: 2 given, 3 expected"),
            "dead:template",
        ),
        ("phone", 400, err(5, "PHONE_INVALID: +1"), "dead:template"),
        (
            "header",
            400,
            err(8, "INVALID_HEADER: not an image"),
            "dead:template",
        ),
        (
            "missing",
            400,
            err(1, "ARGUMENT_MISSING: header_attachment_url"),
            "dead:template",
        ),
        (
            "shape",
            400,
            err(2, "TYPE_MISMATCH: message_variables"),
            "dead:template",
        ),
        ("code 3 only", 400, err(3, "something"), "dead:template"),
        (
            "deprecated key",
            400,
            err(6, "DEPRECATED_API_KEY: rotate"),
            "dead:unauthorized",
        ),
        ("code 6 only", 400, err(6, "?"), "dead:unauthorized"),
        (
            "Meta 132000",
            400,
            err(99, "(#132000) param count"),
            "dead:template",
        ),
        (
            "Meta 132001",
            400,
            err(99, "(#132001) does not exist"),
            "dead:template",
        ),
        (
            "Meta 132005",
            400,
            err(99, "(#132005) too long"),
            "dead:template",
        ),
        (
            "Meta 132007",
            400,
            err(99, "(#132007) policy"),
            "dead:template",
        ),
        (
            "Meta 132012",
            400,
            err(99, "(#132012) format"),
            "dead:template",
        ),
        (
            "Meta 132016",
            400,
            err(99, "(#132016) disabled"),
            "dead:template",
        ),
        (
            "Meta 132015 paused",
            400,
            err(99, "(#132015) template paused"),
            "retry:paused",
        ),
        (
            "Meta 131049 cap",
            400,
            err(99, "(#131049) marketing cap"),
            "retry:paused",
        ),
        (
            "Meta 131050 opted out",
            400,
            err(99, "(#131050) stopped marketing"),
            "dead:opted_out",
        ),
        ("429", 429, Vec::new(), "retry:rate_limited"),
        ("503", 503, Vec::new(), "retry:server_error"),
        ("401", 401, Vec::new(), "dead:unauthorized"),
        (
            "unrecognised 400",
            400,
            err(42, "NEW_THING"),
            "dead:validation",
        ),
    ];
    for (name, status, body, want) in rows {
        assert_eq!(
            kind(&classify(Family::Template, status, None, &body)),
            want,
            "row {name}"
        );
    }
    // The same code in the interactive family keeps its meaning there.
    assert_eq!(
        kind(&classify(Family::Interactive, 400, None, &err(3, "?"))),
        "dead:validation"
    );
    assert_eq!(
        kind(&classify(
            Family::Interactive,
            400,
            None,
            &err(99, "(#470) window")
        )),
        "dead:window"
    );
}

#[test]
fn name_wins_over_status() {
    // A 401 whose body names a validation error is still read by its name.
    let o = classify(
        Family::Interactive,
        401,
        None,
        &err(1, "ARGUMENT_MISSING: x"),
    );
    assert_eq!(kind(&o), "dead:validation");
}

#[test]
fn meta_code_must_stand_alone() {
    let o = classify(
        Family::Interactive,
        400,
        None,
        &err(99, "order 1310470 failed"),
    );
    assert_eq!(kind(&o), "dead:validation");
}

#[test]
fn retry_after_is_kept_on_429() {
    let o = classify(Family::Interactive, 429, Some(Duration::from_secs(3)), b"");
    assert!(matches!(o, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)));
}

#[test]
fn octopods_error_is_carried_with_phones_masked() {
    let o = classify(
        Family::Interactive,
        400,
        None,
        &err(1, "ARGUMENT_MISSING: bad +15551234567"),
    );
    let Outcome::DeadLetter(_, f) = o else {
        panic!()
    };
    assert_eq!(f.http_status, Some(400));
    let e = f.octopods_error.unwrap();
    assert_eq!(e.request_id.as_deref(), Some("req_1"));
    assert_eq!(e.error_code, Some(1));
    assert_eq!(
        e.error.as_deref(),
        Some("ARGUMENT_MISSING: bad +1555***4567")
    );
    assert_eq!(
        f.message,
        "Octopods answered 400: ARGUMENT_MISSING: bad +1555***4567"
    );
}

#[test]
fn sent_carries_the_receipt() {
    let body =
        json!({"request_id": "req_9", "message_id": "msg_9", "channel_message_id": "wamid.9"});
    let Outcome::Sent(r) = classify(Family::Interactive, 200, None, body.to_string().as_bytes())
    else {
        panic!()
    };
    assert_eq!(r.message_id, "msg_9");
    assert_eq!(r.channel_message_id.as_deref(), Some("wamid.9"));
}
