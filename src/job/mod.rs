//! Parsing a delivery's bytes into a [`Job`] that is valid by construction
//! (docs/contract.md §3), and the time checks (`expires_at`, the 24-hour window) that
//! are repeated before every attempt.
//!
//! Later stages never re-check what [`Job::parse`] accepted.

pub mod interactive;
pub mod template;

use std::fmt;

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    config::Provider,
    observe::privacy::mask_phone,
    outcome::{Reason, Via},
};

/// Largest body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest `metadata`, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// WhatsApp's customer-service window.
pub const WINDOW: Duration = Duration::hours(24);

const FIELDS: [&str; 10] = [
    "fallback_template",
    "job_id",
    "destination_phone",
    "waba_interactive_message",
    "open_intercom_conversation",
    "intercom_teammate_id",
    "channel",
    "last_inbound_at",
    "expires_at",
    "metadata",
];

/// The producer's key for a send: 1–200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An E.164 number. `Display` and `Debug` mask it; only [`Phone::as_str`]
/// gives the digits, for the Octopods request and the `sent` event.
#[derive(Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(s: &str) -> Option<Phone> {
        let digits = s.strip_prefix('+')?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        ok.then(|| Phone(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_phone(&self.0))
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({self})")
    }
}

/// What an event echoes of a job, taken on a best-effort basis even from a
/// job that failed to parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echo {
    pub job_id: Option<String>,
    pub metadata: Option<Value>,
}

impl Echo {
    /// Best effort from raw bytes (a job that could not be parsed, or one the
    /// worker failed on): its `job_id` and `metadata` if readable.
    pub fn read(bytes: &[u8]) -> Echo {
        if bytes.len() > MAX_BODY_BYTES {
            return Echo::default();
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
            return Echo::default();
        };
        Echo {
            job_id: map.get("job_id").and_then(Value::as_str).map(str::to_owned),
            metadata: map.get("metadata").filter(|m| m.is_object()).cloned(),
        }
    }
}

/// Why a job cannot be sent: the dead-letter reason and a message naming the
/// field and the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
    pub echo: Box<Echo>,
}

/// A valid send job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub phone: Phone,
    pub last_inbound_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub metadata: Option<Value>,
    /// The Octopods request body, serialized once.
    pub request_body: bytes::Bytes,
    /// The template to send instead when the 24-hour window is closed, with
    /// its request body.
    pub fallback: Option<(template::Template, bytes::Bytes)>,
}

impl Job {
    /// Parses and validates a job delivered on `channel`.
    pub fn parse(bytes: &[u8], channel: &str, provider: Provider) -> Result<Job, Rejection> {
        let reject = |reason, message: String, echo: Echo| Rejection {
            reason,
            message,
            echo: Box::new(echo),
        };
        if bytes.len() > MAX_BODY_BYTES {
            let msg = format!("body: {} bytes, limit {MAX_BODY_BYTES}", bytes.len());
            return Err(reject(Reason::Malformed, msg, Echo::default()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            reject(
                Reason::Malformed,
                format!("body: not JSON ({e})"),
                Echo::default(),
            )
        })?;
        let Value::Object(map) = value else {
            let msg = "body: expected a JSON object".to_owned();
            return Err(reject(Reason::Validation, msg, Echo::default()));
        };
        let echo = Echo {
            job_id: map.get("job_id").and_then(Value::as_str).map(str::to_owned),
            metadata: map.get("metadata").filter(|m| m.is_object()).cloned(),
        };
        Self::from_map(map, channel, provider)
            .map_err(|message| reject(Reason::Validation, message, echo))
    }

    fn from_map(
        mut map: Map<String, Value>,
        channel: &str,
        provider: Provider,
    ) -> Result<Job, String> {
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!("{unknown}: unknown field"));
        }
        let id = match map.get("job_id") {
            Some(Value::String(s)) if (1..=200).contains(&s.chars().count()) => JobId(s.clone()),
            Some(Value::String(s)) if s.is_empty() => return Err("job_id: empty".into()),
            Some(Value::String(s)) => {
                return Err(format!(
                    "job_id: {} characters, limit 200",
                    s.chars().count()
                ));
            }
            Some(_) => return Err("job_id: expected a string".into()),
            None => return Err("job_id: required".into()),
        };
        let phone = match map.get("destination_phone") {
            Some(Value::String(s)) => Phone::parse(s).ok_or_else(|| {
                format!(
                    "destination_phone: {} is not E.164 (+, first digit 1-9, 8 to 15 digits)",
                    mask_phone(s)
                )
            })?,
            Some(_) => return Err("destination_phone: expected a string".into()),
            None => return Err("destination_phone: required".into()),
        };
        let message = map
            .remove("waba_interactive_message")
            .ok_or("waba_interactive_message: required")?;
        interactive::validate(&message, provider)
            .map_err(|e| format!("waba_interactive_message.{e}"))?;
        let open_intercom = match map.get("open_intercom_conversation") {
            None | Some(Value::Bool(_)) => map.remove("open_intercom_conversation"),
            Some(_) => return Err("open_intercom_conversation: expected a boolean".into()),
        };
        let teammate = match map.get("intercom_teammate_id") {
            None | Some(Value::String(_)) => map.remove("intercom_teammate_id"),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                map.remove("intercom_teammate_id")
            }
            Some(_) => return Err("intercom_teammate_id: expected a string or an integer".into()),
        };
        match map.get("channel") {
            None => {}
            Some(Value::String(c)) if c == channel => {}
            Some(Value::String(c)) => {
                return Err(format!(
                    "channel: {c:?} does not match the queue's channel {channel:?}"
                ));
            }
            Some(_) => return Err("channel: expected a string".into()),
        }
        let last_inbound_at = timestamp(&map, "last_inbound_at")?;
        let expires_at = timestamp(&map, "expires_at")?;
        let metadata = match map.remove("metadata") {
            None => None,
            Some(m @ Value::Object(_)) => {
                let size = m.to_string().len();
                if size > MAX_METADATA_BYTES {
                    return Err(format!(
                        "metadata: {size} bytes serialized, limit {MAX_METADATA_BYTES}"
                    ));
                }
                Some(m)
            }
            Some(_) => return Err("metadata: expected an object".into()),
        };

        let mut intercom = Map::new();
        if let Some(v) = open_intercom {
            intercom.insert("open_intercom_conversation".into(), v);
        }
        if let Some(v) = teammate {
            intercom.insert("intercom_teammate_id".into(), v);
        }
        let fallback = match map.get("fallback_template") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let t = template::Template::parse(v)?;
                let body = t.request_body(&phone.0, &intercom)?;
                Some((t, body))
            }
        };
        let mut body = Map::new();
        body.insert("destination_phone".into(), Value::String(phone.0.clone()));
        body.insert("waba_interactive_message".into(), message);
        body.extend(intercom);
        let request_body = serde_json::to_vec(&body)
            .map(bytes::Bytes::from)
            .map_err(|e| format!("body: {e}"))?;
        Ok(Job {
            id,
            phone,
            last_inbound_at,
            expires_at,
            metadata,
            request_body,
            fallback,
        })
    }

    /// The time checks made before every attempt: `expires_at`, then the
    /// 24-hour window since `last_inbound_at` (which a template does not need).
    pub fn check_deadlines(&self, now: OffsetDateTime, via: Via) -> Result<(), (Reason, String)> {
        if let Some(expires) = self.expires_at
            && now >= expires
        {
            return Err((
                Reason::Expired,
                format!("expires_at: {} has passed", rfc3339(expires)),
            ));
        }
        // A window ending past the calendar's end has simply not closed yet.
        if let (Via::Interactive, Some(last)) = (via, self.last_inbound_at)
            && last.checked_add(WINDOW).is_some_and(|end| now >= end)
        {
            return Err((
                Reason::Window,
                format!(
                    "last_inbound_at: {} is more than 24 hours ago; the messaging window is closed",
                    rfc3339(last)
                ),
            ));
        }
        Ok(())
    }

    /// The options a customer can tap (buttons, list rows), for matching
    /// the answer (docs/contract.md §15). Read from the request body when
    /// asked — only on a reply-tracking channel — not kept for every job.
    pub fn choices(&self) -> Vec<interactive::Choice> {
        serde_json::from_slice::<Value>(&self.request_body)
            .ok()
            .and_then(|b| b.get("waba_interactive_message").map(interactive::choices))
            .unwrap_or_default()
    }

    pub fn echo(&self) -> Echo {
        Echo {
            job_id: Some(self.id.0.clone()),
            metadata: self.metadata.clone(),
        }
    }
}

/// The question this product exists to ask, as an interactive message: the
/// sample of the load test, the benchmark and the tests.
pub fn delivery_confirmation() -> Value {
    serde_json::json!({
        "type": "button",
        "body": {"text": "Did your order arrive today?"},
        "action": {"buttons": [
            {"type": "reply", "reply": {"id": "yes", "title": "Yes, received"}},
            {"type": "reply", "reply": {"id": "not-yet", "title": "Not yet"}},
            {"type": "reply", "reply": {"id": "problem", "title": "There's a problem"}}
        ]}
    })
}

fn timestamp(map: &Map<String, Value>, key: &str) -> Result<Option<OffsetDateTime>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => OffsetDateTime::parse(s, &Rfc3339)
            .map(Some)
            .map_err(|_| format!("{key}: {s:?} is not an RFC 3339 timestamp")),
        Some(_) => Err(format!("{key}: expected an RFC 3339 string")),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
