//! Result events (docs/contract.md §5): the JSON published to `<prefix>.results` with
//! routing key `<event>.<channel>`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

use crate::{
    job::Job,
    outcome::Via,
    outcome::{EventKind, Failure, OctopodsError, Reason, Receipt},
};

const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-11-24T10:00:01.234Z`.
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
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
pub(crate) struct SentEvent {
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

/// What the recent-`job_id` memory keeps of a `sent` event: how the send came
/// out, without what a redelivered job carries again (`job_id`, `channel`,
/// `metadata`). A JSON array of the values, ~100 bytes where the event is
/// ~400 plus up to 4 KiB of the producer's metadata.
type Kept = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    u32,
    String,
    Via,
    Option<u64>,
);

impl SentEvent {
    /// This event as the recent-`job_id` memory keeps it (see [`Kept`]).
    pub(crate) fn kept(&self) -> Result<Vec<u8>, serde_json::Error> {
        let kept = (
            &self.message_id,
            &self.channel_message_id,
            &self.request_id,
            &self.message_status_url,
            &self.phone_number,
            self.attempts,
            &self.sent_at,
            self.via,
            self.template_id,
        );
        serde_json::to_vec(&kept)
    }

    /// The event again, from what [`SentEvent::kept`] wrote and the job
    /// delivered again (its id, channel and metadata). `None` only for bytes
    /// `kept` did not write.
    pub(crate) fn from_kept(kept: &[u8], job: &Job, channel: &str) -> Option<SentEvent> {
        let (
            message_id,
            channel_message_id,
            request_id,
            message_status_url,
            phone_number,
            attempts,
            sent_at,
            via,
            template_id,
        ): Kept = serde_json::from_slice(kept).ok()?;
        Some(SentEvent {
            event: EventKind::Sent,
            job_id: job.id.as_str().into(),
            channel: channel.into(),
            message_id,
            channel_message_id,
            request_id,
            message_status_url,
            phone_number,
            attempts,
            sent_at,
            via,
            template_id,
            metadata: job.metadata.clone(),
        })
    }

    /// The event's JSON, written once into a buffer of its usual size.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }

    pub(crate) fn new(
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
pub(crate) struct DeadLetteredEvent {
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
    pub(crate) fn new(
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

/// `replied.<channel>` (docs/contract.md §15): the customer tapped an
/// option of the job's prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RepliedEvent {
    pub event: EventKind,
    pub job_id: String,
    pub channel: String,
    /// The option, as the job wrote it.
    pub option: crate::job::interactive::Choice,
    /// When the customer wrote it (the platform's time).
    pub replied_at: String,
    /// `conversation` (the Intercom conversation of the prompt) or `phone`.
    pub matched_by: String,
    pub reply: ReplyIds,
    pub message_id: String,
    pub channel_message_id: Option<String>,
    pub metadata: Option<Value>,
}

/// The inbox platform's ids of a customer's message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReplyIds {
    /// `intercom` or `hubspot`.
    pub platform: String,
    /// The message: `intercom:<conversation part id>` or
    /// `hubspot:<message id>`. The same message delivered twice has one.
    pub id: String,
    /// Intercom's conversation id, or HubSpot's thread id.
    pub conversation_id: String,
}

/// `reply_ambiguous.<channel>`: two or more open prompts to the customer
/// have an option with this title; no guess is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReplyAmbiguousEvent {
    pub event: EventKind,
    pub channel: String,
    /// The candidates' `job_id`s.
    pub job_ids: Vec<String>,
    /// The title they share, as the first candidate's job wrote it.
    pub title: String,
    pub replied_at: String,
    pub reply: ReplyIds,
}

/// `reply_unmatched.<channel>` (only where the channel opts in): a message
/// that answers no open prompt, with its text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReplyUnmatchedEvent {
    pub event: EventKind,
    pub channel: String,
    pub text: String,
    pub replied_at: String,
    pub reply: ReplyIds,
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

    fn job(metadata: serde_json::Value) -> Job {
        let body = serde_json::json!({
            "job_id": "order-1/\u{0}\"\n\u{202e}",
            "destination_phone": "+15551234567",
            "waba_interactive_message": crate::job::delivery_confirmation(),
            "metadata": metadata,
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        Job::parse(&bytes, "store-eu", crate::config::Provider::CloudApi).unwrap()
    }

    #[test]
    fn a_kept_send_rebuilds_the_same_event_bytes() {
        let job = job(serde_json::json!({"order_id": "1", "nested": {"b": [1, 2], "a": null}}));
        let hostile = "\u{0}\"]},\\\n\u{1b}[31m\u{202e}é😀".to_owned();
        for (via, template_id, attempts) in [
            (Via::Interactive, None, 1),
            (Via::Template, Some(u64::MAX), u32::MAX),
        ] {
            let receipt = Receipt {
                message_id: hostile.clone(),
                channel_message_id: Some(hostile.clone()),
                request_id: None,
                message_status_url: Some(format!("https://x/{hostile}")),
                phone_number: None,
            };
            let mut event = SentEvent::new(
                &job,
                "store-eu",
                receipt,
                attempts,
                via,
                datetime!(9999-12-31 23:59:59.999 UTC),
            );
            event.template_id = template_id;
            let kept = event.kept().unwrap();
            assert!(
                kept.len() < event.to_bytes().unwrap().len(),
                "kept is smaller"
            );
            let again = SentEvent::from_kept(&kept, &job, "store-eu").expect("reads back");
            assert_eq!(again, event);
            assert_eq!(
                again.to_bytes().unwrap(),
                event.to_bytes().unwrap(),
                "re-published byte for byte"
            );
            assert_eq!(
                event.to_bytes().unwrap(),
                serde_json::to_vec(&event).unwrap()
            );
        }
    }

    #[test]
    fn kept_bytes_hold_no_metadata_and_bytes_it_did_not_write_read_as_none() {
        let big = "x".repeat(3000);
        let job = job(serde_json::json!({ "blob": big }));
        let receipt = Receipt {
            message_id: "m".into(),
            channel_message_id: None,
            request_id: None,
            message_status_url: None,
            phone_number: None,
        };
        let event = SentEvent::new(
            &job,
            "c",
            receipt,
            1,
            Via::Interactive,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert!(
            event.kept().unwrap().len() < 200,
            "{} bytes",
            event.kept().unwrap().len()
        );
        for junk in [&b""[..], b"{}", b"[]", b"null", b"[\"m\"]", &[0xff, 0xfe]] {
            assert!(SentEvent::from_kept(junk, &job, "c").is_none());
        }
    }
}
