//! The answers Octopods documents: for a send (the key, the per-key rate
//! limit, the body's shape and limits), a template send, a status poll, and
//! each scripted fault.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{TemplateSpec, api::timestamp, script::Fault, state::SandboxState, validate};

/// What the sandbox decided to answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<u64>,
    pub(crate) hang: Option<Duration>,
}

fn error(status: u16, code: i64, text: &str) -> Answer {
    Answer {
        status,
        body: json!({"request_id": request_id(), "error_code": code, "error": text}),
        retry_after: None,
        hang: None,
    }
}

fn request_id() -> String {
    format!("req_{}", ulid::Ulid::generate())
}

pub(crate) fn fault_answer(fault: Fault) -> Option<Answer> {
    Some(match fault {
        // A scripted status answers a poll; for a send it is a success.
        Fault::Success | Fault::MessageStatus { .. } => return None,
        Fault::Accepted { message_id } => Answer {
            status: 200,
            body: json!({"request_id": request_id(), "message_id": message_id,
                "channel_message_id": format!("wamid.{}", ulid::Ulid::generate())}),
            retry_after: None,
            hang: None,
        },
        Fault::MissingField => error(400, 1, "ARGUMENT_MISSING: a required argument is missing"),
        Fault::WrongShape => error(400, 2, "TYPE_MISMATCH: an argument has the wrong type"),
        Fault::Validation => error(
            400,
            7,
            "VALIDATION: action.buttons: too many buttons, limit 3",
        ),
        Fault::Window => error(
            400,
            8,
            "OUTSIDE_WINDOW: the last inbound message is older than 24 hours; send a template",
        ),
        Fault::Unauthorized => error(401, 5, "UNAUTHORIZED: the API key is missing or unknown"),
        Fault::DeprecatedKey => error(400, 6, "DEPRECATED_API_KEY: this API key was revoked"),
        Fault::NotEnabled => error(
            403,
            9,
            "INTERACTIVE_NOT_ENABLED: ask Octopods support to enable the interactive API",
        ),
        Fault::RateLimited { retry_after } => Answer {
            status: 429,
            body: json!({"request_id": request_id(), "error": "Too Many Requests"}),
            retry_after: Some(retry_after.unwrap_or(1)),
            hang: None,
        },
        Fault::Outage { status } => Answer {
            status: status.unwrap_or(503),
            body: json!({"error": "Service Unavailable"}),
            retry_after: None,
            hang: None,
        },
        Fault::Hang { ms } => Answer {
            status: 504,
            body: json!({"error": "hung"}),
            retry_after: None,
            hang: Some(Duration::from_millis(ms)),
        },
        Fault::Status {
            status,
            error_code,
            error: text,
        } => Answer {
            status,
            body: json!({"request_id": request_id(), "error_code": error_code, "error": text}),
            retry_after: None,
            hang: None,
        },
    })
}

/// Octopods' own checks, in the order the docs imply.
/// The key and the per-key rate limit, as for every endpoint.
pub(crate) fn gate(state: &SandboxState, auth: Option<&str>) -> Option<Answer> {
    let Some(key) = auth.filter(|k| !k.is_empty()) else {
        return Some(error(
            401,
            5,
            "UNAUTHORIZED: X-Octopods-Auth header missing",
        ));
    };
    if !state.config.api_keys.is_empty() && !state.config.api_keys.iter().any(|k| k == key) {
        return Some(error(401, 5, "UNAUTHORIZED: unknown API key"));
    }
    if let Some(limiter) = &state.per_key
        && limiter.check_key(&key.to_owned()).is_err()
    {
        return Some(Answer {
            status: 429,
            body: json!({"request_id": request_id(), "error": "Too Many Requests"}),
            retry_after: Some(1),
            hang: None,
        });
    }
    None
}

/// A queued send: fresh ids.
fn accepted(state: &SandboxState, phone: &str) -> Answer {
    let id = ulid::Ulid::generate();
    let message_id = format!("msg_{id}");
    if let Ok(mut sent) = state.sent.lock() {
        sent.insert(message_id.clone(), (Instant::now(), phone.to_owned()));
    }
    Answer {
        status: 200,
        body: json!({
            "request_id": request_id(),
            "message_id": message_id,
            "message_status_url": format!("http://{}/api/v1/whatsapp/messages/{message_id}", state.addr),
            "phone_number": phone,
            "channel_message_id": format!("wamid.{id}"),
        }),
        retry_after: None,
        hang: None,
    }
}

/// `POST /api/v1/whatsapp/templates/{id}/messages`, as Octopods documents it.
pub(crate) fn template_answer(
    state: &SandboxState,
    auth: Option<&str>,
    id: &str,
    body: &[u8],
) -> Answer {
    if let Some(refused) = gate(state, auth) {
        return refused;
    }
    let catalog = if state.config.templates.is_empty() {
        TemplateSpec::default_catalog()
    } else {
        state.config.templates.clone()
    };
    let Some(spec) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| catalog.into_iter().find(|t| t.id == id))
    else {
        return error(
            400,
            3,
            &format!("TEMPLATE_NOT_EXIST: no accepted template {id}"),
        );
    };
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return error(400, 2, "TYPE_MISMATCH: the body must be a JSON object");
    };
    let Some(phone) = req.get("destination_phone").and_then(Value::as_str) else {
        return error(400, 1, "ARGUMENT_MISSING: destination_phone");
    };
    if !validate::e164(phone) {
        return error(400, 5, "PHONE_INVALID: destination_phone is not E.164");
    }
    let body_only = spec.sections == ["body"];
    match req.get("message_variables") {
        Some(Value::Array(_)) if !body_only => {
            return error(
                400,
                2,
                "TYPE_MISMATCH: message_variables must be an object with header, body, footer and buttons for this template",
            );
        }
        Some(Value::Object(m)) => {
            if let Some(missing) = ["header", "body", "footer", "buttons"]
                .iter()
                .find(|k| !m.contains_key(**k))
            {
                return error(
                    400,
                    1,
                    &format!("ARGUMENT_MISSING: message_variables.{missing}"),
                );
            }
        }
        _ => {}
    }
    accepted(state, phone)
}

pub(crate) fn normal_answer(state: &SandboxState, auth: Option<&str>, body: &[u8]) -> Answer {
    if let Some(refused) = gate(state, auth) {
        return refused;
    }
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return error(400, 2, "TYPE_MISMATCH: the body must be a JSON object");
    };
    let Some(phone) = req.get("destination_phone") else {
        return error(400, 1, "ARGUMENT_MISSING: destination_phone");
    };
    let Some(phone) = phone.as_str() else {
        return error(400, 2, "TYPE_MISMATCH: destination_phone must be a string");
    };
    let Some(message) = req.get("waba_interactive_message") else {
        return error(400, 1, "ARGUMENT_MISSING: waba_interactive_message");
    };
    if let Err(refusal) = validate::interactive(message) {
        return match refusal {
            validate::Refusal::Missing(at) => error(400, 1, &format!("ARGUMENT_MISSING: {at}")),
            validate::Refusal::WrongType(at) => error(400, 2, &format!("TYPE_MISMATCH: {at}")),
            validate::Refusal::Limit(at) => error(400, 7, &format!("VALIDATION: {at}")),
        };
    }
    accepted(state, phone)
}

pub(crate) fn message_status(
    s: &SandboxState,
    id: &str,
    known: Option<&(Instant, String)>,
    scripted: Option<(String, Option<String>)>,
) -> Answer {
    let Some((at, phone)) = known else {
        return error(404, 10, &format!("NOT_FOUND: no message {id}"));
    };
    let age = at.elapsed();
    let stamp = |after: Duration| {
        (age >= after).then(|| {
            let t = time::OffsetDateTime::now_utc() - (age - after);
            timestamp(t)
        })
    };
    let sent_at = stamp(Duration::ZERO);
    let delivered_at = stamp(s.config.delivered_after);
    let read_at = stamp(s.config.read_after);
    let (status, failure_reason) = match scripted {
        Some(scripted) => scripted,
        None if read_at.is_some() => ("READ".to_owned(), None),
        None if delivered_at.is_some() => ("DELIVERED".to_owned(), None),
        None => ("SENT".to_owned(), None),
    };
    let conversation = s
        .conversations
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .map(|open| open(phone))
        .unwrap_or_default();
    Answer {
        status: 200,
        body: json!({"request_id": request_id(), "message_id": id, "status": status,
                     "phone_number": phone, "sent_at": sent_at, "delivered_at": delivered_at,
                     "read_at": read_at, "failure_reason": failure_reason,
                     "intercom_conversation_id": conversation, "intercom_conversation_part_id": ""}),
        retry_after: None,
        hang: None,
    }
}
