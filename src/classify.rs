//! The one place that decides what an attempt came to: sent, retry, or
//! dead-letter (CONTRACT §4, octopods-api.md). HTTP answers ([`classify`]) are
//! read by Octopods' error name first, then Meta error codes in the text, then
//! the documented interactive-family `error_code`, then the HTTP status. The
//! attempts that got no answer ([`transport`]), a key that cannot be sent
//! ([`unusable_key`]) and a job whose retry budget is spent ([`budget_spent`])
//! are decided here too, beside the table test that walks them all.

use std::time::Duration;

use crate::{
    config::RetryConfig,
    outcome::{Failure, OctopodsError, Outcome, Reason, Receipt, RetryCause},
    telemetry::redact_phones,
};

/// What an answer means before the failure details are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    DeadLetter(Reason),
    Retry(RetryCause),
}

/// The endpoint family an answer came from: Octopods numbers its error
/// codes per family, so the same code means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Interactive,
    Template,
}

/// Maps an HTTP answer from Octopods to an [`Outcome`].
pub fn classify(
    family: Family,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Receipt>(body) {
            Ok(receipt) if !receipt.message_id.is_empty() => Outcome::Sent(receipt),
            _ => Outcome::Retry {
                cause: RetryCause::Unreadable,
                after: None,
                failure: Failure {
                    message: format!("Octopods answered {status} without a message_id"),
                    http_status: Some(status),
                    octopods_error: None,
                },
            },
        };
    }
    let error: Option<OctopodsError> = serde_json::from_slice::<OctopodsError>(body)
        .ok()
        .filter(|e| e.error.is_some() || e.error_code.is_some());
    let verdict = verdict(family, status, error.as_ref());
    let failure = Failure {
        message: describe(status, error.as_ref(), body),
        http_status: Some(status),
        octopods_error: error.map(|mut e| {
            e.error = e.error.map(|t| redact_phones(&t));
            e
        }),
    };
    match verdict {
        Verdict::DeadLetter(reason) => Outcome::DeadLetter(reason, failure),
        Verdict::Retry(cause) => Outcome::Retry {
            cause,
            after: retry_after.filter(|_| cause == RetryCause::RateLimited || status == 503),
            failure,
        },
    }
}

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// No answer within the request timeout.
    Timeout(Duration),
    /// Could not connect.
    Connect,
    /// The connection broke, or the answer could not be read.
    Broken(String),
}

/// An attempt that got no answer: always transient.
pub(crate) fn transport(t: Transport) -> Outcome {
    let (cause, message) = match t {
        Transport::Timeout(after) => (
            RetryCause::Timeout,
            format!("no answer from Octopods within {after:?}"),
        ),
        Transport::Connect => (RetryCause::Connect, "cannot connect to Octopods".to_owned()),
        Transport::Broken(why) => (
            RetryCause::Connect,
            format!("request to Octopods failed: {}", redact_phones(&why)),
        ),
    };
    Outcome::Retry {
        cause,
        after: None,
        failure: Failure::local(message),
    }
}

/// The channel's key cannot be put in a header (control characters): no
/// request can succeed until an operator changes it.
pub(crate) fn unusable_key() -> Outcome {
    Outcome::DeadLetter(
        Reason::Unauthorized,
        Failure::local("the channel's API key is not a valid header value"),
    )
}

/// After a transient failure: `Err` with the dead-letter reason if the job's
/// retry budget (`max_attempts`, `max_elapsed`, counted across deliveries) is
/// spent, else the failure back to retry.
pub(crate) fn budget_spent(
    attempts: u32,
    elapsed: Duration,
    retry: &RetryConfig,
    failure: Failure,
) -> Result<Failure, (Reason, Failure)> {
    if attempts < retry.max_attempts && elapsed < retry.max_elapsed {
        return Ok(failure);
    }
    let why = if attempts >= retry.max_attempts {
        format!("{attempts} attempts")
    } else {
        format!(
            "{attempts} attempts in {}",
            humantime::format_duration(elapsed)
        )
    };
    Err((
        Reason::RetriesExhausted,
        Failure {
            message: format!("{why}: {}", failure.message),
            ..failure
        },
    ))
}

fn verdict(family: Family, status: u16, error: Option<&OctopodsError>) -> Verdict {
    use Reason::*;
    match status {
        429 => return Verdict::Retry(RetryCause::RateLimited),
        408 => return Verdict::Retry(RetryCause::Timeout),
        500..=599 => return Verdict::Retry(RetryCause::ServerError),
        400..=499 => {}
        _ => return Verdict::Retry(RetryCause::Unreadable),
    }
    let text = error.and_then(|e| e.error.as_deref()).unwrap_or_default();
    if let Some(v) = by_name(family, text) {
        return v;
    }
    if let Some(v) = by_meta_code(text) {
        return v;
    }
    if let Some(v) = error
        .and_then(|e| e.error_code)
        .and_then(|c| by_code(family, c))
    {
        return v;
    }
    Verdict::DeadLetter(match status {
        400 => Validation,
        401 => Unauthorized,
        403 => Forbidden,
        _ => Rejected,
    })
}

/// Octopods' documented error names, at the start of `error`.
fn by_name(family: Family, text: &str) -> Option<Verdict> {
    let name = text
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .next()
        .unwrap_or_default();
    let template_names = [
        "TEMPLATE_NOT_EXIST",
        "VARIABLES_SIZE",
        "PHONE_INVALID",
        "INVALID_HEADER",
        "ARGUMENT_MISSING",
        "TYPE_MISMATCH",
    ];
    if family == Family::Template && template_names.contains(&name) {
        return Some(Verdict::DeadLetter(Reason::Template));
    }
    let reason = match name {
        "ARGUMENT_MISSING" | "TYPE_MISMATCH" | "VALIDATION" => Reason::Validation,
        "OUTSIDE_WINDOW" => Reason::Window,
        "UNAUTHORIZED" | "DEPRECATED_API_KEY" | "INVALID_API_KEY" => Reason::Unauthorized,
        "INTERACTIVE_NOT_ENABLED" => Reason::Forbidden,
        _ => return None,
    };
    Some(Verdict::DeadLetter(reason))
}

/// Meta Cloud API codes that surface in Octopods' error text.
fn by_meta_code(text: &str) -> Option<Verdict> {
    let has = |code: &str| {
        text.match_indices(code).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text
                .get(i.saturating_add(code.len())..)
                .and_then(|t| t.chars().next());
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
    };
    let template_codes = ["132000", "132001", "132005", "132007", "132012", "132016"];
    if has("131047") || has("470") {
        Some(Verdict::DeadLetter(Reason::Window))
    } else if template_codes.iter().any(|c| has(c)) {
        Some(Verdict::DeadLetter(Reason::Template))
    } else if has("132015") || has("131049") {
        Some(Verdict::Retry(RetryCause::Paused))
    } else if has("131050") {
        Some(Verdict::DeadLetter(Reason::OptedOut))
    } else if has("131056") || has("130429") || has("131048") {
        Some(Verdict::Retry(RetryCause::Throttled))
    } else if has("131026") {
        Some(Verdict::DeadLetter(Reason::Rejected))
    } else {
        None
    }
}

/// Interactive-family `error_code`s (octopods-api.md's table).
fn by_code(family: Family, code: i64) -> Option<Verdict> {
    if family == Family::Template {
        let reason = match code {
            1..=5 | 8 => Reason::Template,
            6 => Reason::Unauthorized,
            _ => return None,
        };
        return Some(Verdict::DeadLetter(reason));
    }
    let reason = match code {
        1 | 2 | 7 => Reason::Validation,
        8 => Reason::Window,
        5 | 6 => Reason::Unauthorized,
        9 => Reason::Forbidden,
        _ => return None,
    };
    Some(Verdict::DeadLetter(reason))
}

fn describe(status: u16, error: Option<&OctopodsError>, body: &[u8]) -> String {
    let detail = match error.and_then(|e| e.error.as_deref()) {
        Some(text) => redact_phones(text),
        None if body.is_empty() => "empty body".to_owned(),
        None => {
            let text = String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default());
            redact_phones(text.trim())
        }
    };
    format!("Octopods answered {status}: {detail}")
}

#[cfg(test)]
mod tests {
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

    /// CONTRACT §4 and octopods-api.md, row by row.
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

    /// CONTRACT §11: the template family, by name first, then Meta codes,
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
        let Outcome::Sent(r) =
            classify(Family::Interactive, 200, None, body.to_string().as_bytes())
        else {
            panic!()
        };
        assert_eq!(r.message_id, "msg_9");
        assert_eq!(r.channel_message_id.as_deref(), Some("wamid.9"));
    }
}
