//! Delivery status (docs/contract.md §12): whether a sent prompt was delivered and
//! read. Octopods publishes no webhooks; the documented way is to poll
//! `GET /api/v1/whatsapp/messages/{message_id}`.
//!
//! Pending checks live in the broker, not in memory: a sent message on a
//! channel with `track_status` gets a [`Check`] record, which waits in a delay
//! queue and then arrives on `<prefix>.status.<channel>`. Handling it polls
//! once and [`decide`]s — a pure function — which events to publish and when
//! to look again; settle publishes both with confirms before the ack, so a
//! restart loses no check and publishes no status twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{config::StatusConfig, events::timestamp, outcome::EventKind};

/// How far the message got, as far as events were published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Stage {
    #[default]
    Sent,
    Delivered,
    Read,
}

/// A pending status check, as it waits in the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Check {
    pub message_id: String,
    pub job_id: String,
    pub channel: String,
    #[serde(default)]
    pub channel_message_id: Option<String>,
    /// When the worker sent it (RFC 3339): the schedule and horizon count from here.
    pub sent_at: String,
    /// Polls made so far.
    #[serde(default)]
    pub polls: u32,
    /// The last stage an event was published for.
    #[serde(default)]
    pub published: Stage,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// The Intercom conversation already recorded for replies (docs/contract.md §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
}

impl From<&crate::events::SentEvent> for Check {
    /// The first check of a message, from its `sent` event.
    fn from(e: &crate::events::SentEvent) -> Check {
        Check {
            message_id: e.message_id.clone(),
            job_id: e.job_id.clone(),
            channel: e.channel.clone(),
            channel_message_id: e.channel_message_id.clone(),
            sent_at: e.sent_at.clone(),
            polls: 0,
            published: Stage::Sent,
            metadata: e.metadata.clone(),
            conversation: None,
        }
    }
}

/// A message's status as Octopods reports it (both documented shapes).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct Answer {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub sent_at: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
    #[serde(default)]
    pub read_at: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default)]
    pub status_message: Option<String>,
    /// The CRM conversation Octopods opened; empty when none.
    #[serde(default)]
    pub intercom_conversation_id: Option<Value>,
}

impl Answer {
    /// The Intercom conversation, when Octopods opened one (a string or a
    /// number of at most 128 characters; empty means none).
    pub(crate) fn conversation(&self) -> Option<String> {
        let id = match self.intercom_conversation_id.as_ref()? {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        (!id.is_empty() && id.len() <= 128).then_some(id)
    }
}

/// What a poll came to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Polled {
    /// 2xx with a readable status.
    Status(Answer),
    /// Anything else (an error status, no answer, unreadable): ask again later.
    NoAnswer(String),
}

/// What handling a check decides: events to publish, and the next check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub events: Vec<(EventKind, Value)>,
    pub next: Option<(Check, Duration)>,
}

/// Reads a poll's answer (any body; bad JSON is no answer).
pub(crate) fn read_answer(status: u16, body: &[u8]) -> Polled {
    if !(200..300).contains(&status) {
        return Polled::NoAnswer(format!("Octopods answered {status}"));
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) if a.status.is_some() => Polled::Status(a),
        _ => Polled::NoAnswer(format!("Octopods answered {status} without a status")),
    }
}

/// Decides what a poll means: a new stage publishes its event (a stage
/// skipped, `read` without `delivered`, publishes `delivered` first only if
/// Octopods gave its time), `failed` ends tracking, `UNKNOWN` and errors ask
/// again on the schedule, and past the horizon `status_unknown` ends it.
pub(crate) fn decide(
    check: &Check,
    polled: &Polled,
    now: OffsetDateTime,
    config: &StatusConfig,
) -> Decision {
    let mut events = Vec::new();
    let mut published = check.published;
    let mut done = false;
    if let Polled::Status(a) = polled {
        let status = a.status.as_deref().unwrap_or_default();
        match status.to_ascii_lowercase().as_str() {
            "delivered" if published < Stage::Delivered => {
                events.push((EventKind::Delivered, event(check, EventKind::Delivered, a)));
                published = Stage::Delivered;
            }
            "read" => {
                if published < Stage::Delivered && a.delivered_at.is_some() {
                    events.push((EventKind::Delivered, event(check, EventKind::Delivered, a)));
                }
                if published < Stage::Read {
                    events.push((EventKind::Read, event(check, EventKind::Read, a)));
                }
                published = Stage::Read;
                done = true;
            }
            "failed" => {
                events.push((EventKind::Failed, event(check, EventKind::Failed, a)));
                done = true;
            }
            // Removed: nothing more will be learnt.
            "deleted" => done = true,
            _ => {}
        }
    }
    let sent_at = OffsetDateTime::parse(&check.sent_at, &Rfc3339).unwrap_or(now);
    let age = crate::clock::between(sent_at, now);
    if !done && age >= config.horizon {
        let last = match polled {
            Polled::Status(a) => a.clone(),
            Polled::NoAnswer(_) => Answer::default(),
        };
        events.push((
            EventKind::StatusUnknown,
            event(check, EventKind::StatusUnknown, &last),
        ));
        done = true;
    }
    let next = (!done).then(|| {
        let index = usize::try_from(check.polls).unwrap_or(usize::MAX);
        let delay = config
            .schedule
            .get(index.saturating_add(1))
            .or(config.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(3600));
        let next = Check {
            polls: check.polls.saturating_add(1),
            published,
            ..check.clone()
        };
        (next, delay)
    });
    Decision { events, next }
}

/// A status event (docs/contract.md §12).
fn event(check: &Check, kind: EventKind, a: &Answer) -> Value {
    let mut e = serde_json::json!({
        "event": kind.as_str(),
        "job_id": check.job_id,
        "channel": check.channel,
        "message_id": check.message_id,
        "channel_message_id": check.channel_message_id,
        "status": a.status,
        "sent_at": a.sent_at,
        "delivered_at": a.delivered_at,
        "read_at": a.read_at,
        "observed_at": timestamp(OffsetDateTime::now_utc()),
        "metadata": check.metadata,
    });
    if kind == EventKind::Failed
        && let Some(o) = e.as_object_mut()
    {
        let reason = a
            .failure_reason
            .clone()
            .or_else(|| a.status_message.clone());
        o.insert(
            "failure_reason".into(),
            serde_json::json!(reason.map(|r| crate::observe::privacy::redact(&r).into_owned())),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn config() -> StatusConfig {
        StatusConfig {
            schedule: vec![Duration::from_secs(30), Duration::from_secs(120)],
            horizon: Duration::from_secs(3600),
        }
    }

    fn check(published: Stage, polls: u32) -> Check {
        Check {
            message_id: "msg_1".into(),
            job_id: "j".into(),
            channel: "store-eu".into(),
            channel_message_id: Some("wamid.1".into()),
            sent_at: "2026-11-25T10:00:00Z".into(),
            polls,
            published,
            metadata: Some(json!({"order_id": "1"})),
            conversation: None,
        }
    }

    fn answer(v: Value) -> Polled {
        read_answer(200, v.to_string().as_bytes())
    }

    fn kinds(d: &Decision) -> Vec<&'static str> {
        d.events.iter().map(|(k, _)| k.as_str()).collect()
    }

    const SOON: OffsetDateTime = datetime!(2026-11-25 10:01 UTC);

    #[test]
    fn statuses_read_in_any_case_move_forward_once() {
        let d = decide(
            &check(Stage::Sent, 0),
            &answer(json!({"status": "DELIVERED", "delivered_at": "t1"})),
            SOON,
            &config(),
        );
        assert_eq!(kinds(&d), ["delivered"]);
        let (next, delay) = d.next.unwrap();
        assert_eq!(
            (next.published, next.polls, delay),
            (Stage::Delivered, 1, Duration::from_secs(120))
        );
        // The same status again publishes nothing; the last delay repeats.
        let d = decide(
            &next,
            &answer(json!({"status": "delivered"})),
            SOON,
            &config(),
        );
        assert!(d.events.is_empty());
        assert_eq!(d.next.unwrap().1, Duration::from_secs(120));
    }

    #[test]
    fn read_without_delivered_publishes_what_is_known() {
        let d = decide(
            &check(Stage::Sent, 0),
            &answer(json!({"status": "read", "read_at": "t2"})),
            SOON,
            &config(),
        );
        assert_eq!(kinds(&d), ["read"]);
        assert!(d.next.is_none());
        let d = decide(
            &check(Stage::Sent, 0),
            &answer(json!({"status": "READ", "delivered_at": "t1", "read_at": "t2"})),
            SOON,
            &config(),
        );
        assert_eq!(kinds(&d), ["delivered", "read"]);
        assert_eq!(d.events[1].1["read_at"], "t2");
    }

    #[test]
    fn failed_carries_its_reason_and_ends() {
        let d = decide(
            &check(Stage::Sent, 0),
            &answer(
                json!({"status": "FAILED", "failure_reason": "recipient +15551234567 not on WhatsApp"}),
            ),
            SOON,
            &config(),
        );
        assert_eq!(kinds(&d), ["failed"]);
        assert_eq!(
            d.events[0].1["failure_reason"],
            "recipient +1555***4567 not on WhatsApp"
        );
        assert!(d.next.is_none());
    }

    #[test]
    fn unknown_and_errors_ask_again_and_the_horizon_ends_it() {
        for polled in [
            answer(json!({"status": "UNKNOWN"})),
            read_answer(503, b""),
            read_answer(200, b"<html>"),
        ] {
            let d = decide(&check(Stage::Sent, 0), &polled, SOON, &config());
            assert!(d.events.is_empty() && d.next.is_some(), "{polled:?}");
        }
        let late = datetime!(2026-11-25 11:00 UTC);
        let d = decide(
            &check(Stage::Delivered, 9),
            &read_answer(503, b""),
            late,
            &config(),
        );
        assert_eq!(kinds(&d), ["status_unknown"]);
        assert!(d.next.is_none());
    }

    proptest::proptest! {
        /// Any answer, any check: no panic, at most two events, and the
        /// next check (if any) counts one more poll.
        #[test]
        fn any_answer_decides_sanely(
            status in proptest::option::of("\\PC{0,12}"),
            delivered in proptest::option::of("\\PC{0,30}"),
            code in 100u16..600,
            polls in proptest::prelude::any::<u32>(),
            secs in proptest::prelude::any::<i64>(),
        ) {
            let body = json!({"status": status, "delivered_at": delivered, "read_at": null});
            let polled = read_answer(code, body.to_string().as_bytes());
            let at = OffsetDateTime::from_unix_timestamp(secs.rem_euclid(253_402_300_799)).unwrap_or(SOON);
            let d = decide(&check(Stage::Sent, polls), &polled, at, &config());
            proptest::prop_assert!(d.events.len() <= 2);
            if let Some((next, _)) = d.next {
                proptest::prop_assert_eq!(next.polls, polls.saturating_add(1));
            }
        }
    }
}
