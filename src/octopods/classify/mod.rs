//! The one place that decides what an attempt came to: sent, retry, or
//! dead-letter (docs/contract.md §4, `docs/octopods-api.md`). HTTP answers ([`classify`]) are
//! read by Octopods' error name first, then Meta error codes in the text, then
//! the documented interactive-family `error_code`, then the HTTP status. The
//! attempts that got no answer ([`transport`]), a key that cannot be sent
//! ([`unusable_key`]) and a job whose retry budget is spent ([`budget_spent`])
//! are decided here too, beside the table test that walks them all.

use std::time::Duration;

use crate::{
    config::RetryConfig,
    observe::privacy::redact,
    outcome::{Failure, OctopodsError, Outcome, Reason, Receipt, RetryCause},
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
            e.error = e.error.map(|t| redact(&t).into_owned());
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
            format!("request to Octopods failed: {}", redact(&why)),
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

/// Interactive-family `error_code`s (`docs/octopods-api.md`'s table).
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
        Some(text) => redact(text).into_owned(),
        None if body.is_empty() => "empty body".to_owned(),
        None => {
            let text = String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default());
            redact(text.trim()).into_owned()
        }
    };
    format!("Octopods answered {status}: {detail}")
}

#[cfg(test)]
mod tests;
