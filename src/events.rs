//! Result events (CONTRACT §5): the JSON published to `<prefix>.results` with
//! routing key `<event>.<channel>`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

use crate::{
    job::{Job, Via},
    outcome::{EventKind, Failure, OctopodsError, Reason, Receipt},
};

const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-11-24T10:00:01.234Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    // `to_offset` panics past the calendar's ends (9999-12-31T23:59-23:59
    // is in UTC next year): such a time is written in its own offset.
    match t.checked_to_offset(time::UtcOffset::UTC) {
        Some(utc) => utc.format(MILLIS).unwrap_or_else(|_| utc.to_string()),
        None => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentEvent {
    pub event: EventKind,
    pub job_id: String,
    pub channel: String,
    pub message_id: String,
    pub channel_message_id: Option<String>,
    pub request_id: Option<String>,
    pub message_status_url: Option<String>,
    pub phone_number: String,
    pub attempts: u32,
    pub sent_at: String,
    /// `interactive`, or `template` when the fallback template was sent.
    pub via: Via,
    /// The template sent (with `via: template` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<u64>,
    pub metadata: Option<Value>,
}

impl SentEvent {
    pub fn new(
        job: &Job,
        channel: &str,
        receipt: Receipt,
        attempts: u32,
        via: Via,
        now: OffsetDateTime,
    ) -> Self {
        let phone = job.phone.as_str();
        Self {
            event: EventKind::Sent,
            job_id: job.id.as_str().into(),
            channel: channel.into(),
            message_id: receipt.message_id,
            channel_message_id: receipt.channel_message_id,
            request_id: receipt.request_id,
            message_status_url: receipt.message_status_url,
            phone_number: receipt.phone_number.unwrap_or_else(|| phone.into()),
            attempts,
            sent_at: timestamp(now),
            via,
            template_id: match via {
                Via::Template => job.fallback.as_ref().map(|(t, _)| t.id),
                Via::Interactive => None,
            },
            metadata: job.metadata.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetteredEvent {
    pub event: EventKind,
    pub job_id: Option<String>,
    pub channel: String,
    pub reason: Reason,
    pub error: String,
    pub http_status: Option<u16>,
    pub octopods_error: Option<OctopodsError>,
    pub attempts: u32,
    pub failed_at: String,
    pub metadata: Option<Value>,
}

impl DeadLetteredEvent {
    pub fn new(
        job_id: Option<String>,
        channel: &str,
        reason: Reason,
        failure: &Failure,
        attempts: u32,
        metadata: Option<Value>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            event: EventKind::DeadLettered,
            job_id,
            channel: channel.into(),
            reason,
            error: failure.message.clone(),
            http_status: failure.http_status,
            octopods_error: failure.octopods_error.clone(),
            attempts,
            failed_at: timestamp(now),
            metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        assert_eq!(
            timestamp(datetime!(2026-11-24 10:00:01.234567 UTC)),
            "2026-11-24T10:00:01.234Z"
        );
    }

    #[test]
    fn dead_lettered_event_has_the_contract_shape() {
        let e = DeadLetteredEvent::new(
            Some("j".into()),
            "store-eu",
            Reason::Validation,
            &Failure::local("action.buttons: 4 buttons, limit 3"),
            1,
            None,
            datetime!(2026-11-24 10:00:00 UTC),
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "dead_lettered", "job_id": "j", "channel": "store-eu",
                "reason": "validation", "error": "action.buttons: 4 buttons, limit 3",
                "http_status": null, "octopods_error": null, "attempts": 1,
                "failed_at": "2026-11-24T10:00:00.000Z", "metadata": null})
        );
    }
}
