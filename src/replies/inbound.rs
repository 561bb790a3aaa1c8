//! A webhook's verified payload, read into what the matcher needs: one
//! [`Inbound`] per customer message (docs/contract.md §15, and
//! `docs/inbox-replies.md` for the platforms' shapes). Pure, and lenient
//! where the platforms are loosely documented: a field of another type
//! reads as absent, an event of another kind is not a reply.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Platform;

/// One customer message, as queued for the matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Inbound {
    pub platform: Platform,
    /// Intercom's `app_id`, HubSpot's `portalId`.
    pub workspace: String,
    /// The platform's id of the message: the same message delivered twice
    /// has the same key (Intercom: the conversation part; HubSpot: the
    /// message id).
    pub key: String,
    /// Intercom: the conversation; HubSpot: the thread.
    pub conversation: String,
    /// Intercom: the contact who wrote (their phone is looked up).
    #[serde(default)]
    pub contact: Option<String>,
    /// The text (Intercom; HubSpot's is looked up).
    #[serde(default)]
    pub text: Option<String>,
    /// When the platform says it was written (unix s).
    pub at: i64,
    /// Failed lookups so far (each retried after a delay).
    #[serde(default)]
    pub lookups: u32,
}

/// What one webhook request holds.
#[derive(Debug, PartialEq)]
pub(crate) enum Payload {
    /// Customer messages to match.
    Messages(Vec<Inbound>),
    /// Nothing to match (a ping, another topic, a teammate's message).
    Nothing(&'static str),
}

/// The longest id kept from a payload (ids are short; a long one is not an id).
const MAX_ID: usize = 128;

fn id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An Intercom notification: `conversation.user.created` (the text is the
/// conversation's `source`) or `conversation.user.replied` (the contact's
/// newest comment part). `Err` for a body that is not one.
pub(crate) fn intercom(body: &[u8]) -> Result<Payload, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let topic = v.get("topic").and_then(Value::as_str).unwrap_or_default();
    if !matches!(
        topic,
        "conversation.user.created" | "conversation.user.replied"
    ) {
        return Ok(Payload::Nothing("not a customer message topic"));
    }
    let workspace = id(v.get("app_id")).ok_or("app_id missing")?;
    let item = v.pointer("/data/item").ok_or("data.item missing")?;
    let conversation = id(item.get("id")).ok_or("data.item.id missing")?;
    let by_contact = |author: Option<&Value>| {
        matches!(
            author.and_then(|a| a.get("type")).and_then(Value::as_str),
            Some("user" | "lead" | "contact")
        )
    };
    let (part_key, text, author, at) = if topic == "conversation.user.replied" {
        let parts = item
            .pointer("/conversation_parts/conversation_parts")
            .and_then(Value::as_array)
            .ok_or("conversation_parts missing")?;
        let Some(part) = parts.iter().rev().find(|p| {
            by_contact(p.get("author"))
                && p.get("part_type")
                    .and_then(Value::as_str)
                    .unwrap_or("comment")
                    == "comment"
        }) else {
            return Ok(Payload::Nothing("no comment by a contact"));
        };
        (
            id(part.get("id")).ok_or("conversation part id missing")?,
            part.get("body").and_then(Value::as_str).map(str::to_owned),
            part.get("author"),
            int(part.get("created_at")),
        )
    } else {
        let source = item.get("source").ok_or("source missing")?;
        if !by_contact(source.get("author")) {
            return Ok(Payload::Nothing("started by a teammate"));
        }
        let key = id(source.get("id")).unwrap_or_else(|| format!("{conversation}:source"));
        (
            key,
            source
                .get("body")
                .and_then(Value::as_str)
                .map(str::to_owned),
            source.get("author"),
            int(item.get("created_at")),
        )
    };
    let contact = id(author.and_then(|a| a.get("id")))
        .or_else(|| id(item.pointer("/contacts/contacts/0/id")));
    let at = at
        .or_else(|| int(v.get("created_at")))
        .ok_or("no created_at")?;
    Ok(Payload::Messages(vec![Inbound {
        platform: Platform::Intercom,
        workspace,
        key: format!("intercom:{part_key}"),
        conversation,
        contact,
        text,
        at,
        lookups: 0,
    }]))
}

/// A HubSpot webhook: an array of events, of which each
/// `conversation.newMessage` of type `MESSAGE` is a message to look up.
pub(crate) fn hubspot(body: &[u8]) -> Result<Payload, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let events = v.as_array().ok_or("expected a JSON array of events")?;
    let mut messages = Vec::new();
    for e in events {
        if e.get("subscriptionType").and_then(Value::as_str) != Some("conversation.newMessage") {
            continue;
        }
        if e.get("messageType")
            .and_then(Value::as_str)
            .unwrap_or("MESSAGE")
            != "MESSAGE"
        {
            continue;
        }
        let (Some(workspace), Some(thread), Some(message)) = (
            id(e.get("portalId")),
            id(e.get("objectId")),
            id(e.get("messageId")),
        ) else {
            return Err("an event without portalId, objectId or messageId".into());
        };
        let at = int(e.get("occurredAt")).map_or(0, |ms| ms.div_euclid(1000));
        messages.push(Inbound {
            platform: Platform::Hubspot,
            workspace,
            key: format!("hubspot:{message}"),
            conversation: thread,
            contact: None,
            text: None,
            at,
            lookups: 0,
        });
    }
    if messages.is_empty() {
        return Ok(Payload::Nothing("no new messages"));
    }
    Ok(Payload::Messages(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_intercom_reply_is_the_contacts_newest_comment() {
        let body = json!({
            "type": "notification_event", "id": "notif_1", "topic": "conversation.user.replied",
            "app_id": "abc123", "created_at": 1_796_000_000,
            "data": {"type": "notification_event_data", "item": {
                "id": "c1", "type": "conversation",
                "contacts": {"contacts": [{"type": "contact", "id": "u1"}]},
                "conversation_parts": {"conversation_parts": [
                    {"id": "p1", "part_type": "comment", "body": "<p>old</p>", "created_at": 1, "author": {"type": "user", "id": "u1"}},
                    {"id": "p2", "part_type": "comment", "body": "<p>Yes, received</p>", "created_at": 2, "author": {"type": "lead", "id": "u1"}},
                    {"id": "p3", "part_type": "comment", "body": "an admin", "created_at": 3, "author": {"type": "admin", "id": "a1"}}
                ]}}}
        });
        let Payload::Messages(m) = intercom(body.to_string().as_bytes()).unwrap() else {
            panic!("no message");
        };
        assert_eq!(m[0].key, "intercom:p2");
        assert_eq!(m[0].text.as_deref(), Some("<p>Yes, received</p>"));
        assert_eq!(m[0].contact.as_deref(), Some("u1"));
        assert_eq!(m[0].conversation, "c1");
        assert_eq!(m[0].at, 2);
        let ping =
            json!({"topic": "ping", "app_id": "abc123", "data": {"item": {"message": "hi"}}});
        assert!(matches!(
            intercom(ping.to_string().as_bytes()),
            Ok(Payload::Nothing(_))
        ));
        assert!(intercom(b"[1,2]").is_ok());
        assert!(intercom(b"not json").is_err());
    }

    #[test]
    fn a_hubspot_batch_is_one_inbound_per_new_message() {
        let body = json!([
            {"eventId": 1, "subscriptionId": 2, "portalId": 62515, "appId": 9, "occurredAt": 1_796_000_000_123_i64,
             "subscriptionType": "conversation.newMessage", "attemptNumber": 0, "objectId": 7001,
             "messageId": "m1", "messageType": "MESSAGE", "changeSource": "USER"},
            {"eventId": 2, "portalId": 62515, "subscriptionType": "conversation.creation", "objectId": 7001},
            {"eventId": 3, "portalId": 62515, "subscriptionType": "conversation.newMessage", "objectId": 7001,
             "messageId": "m2", "messageType": "COMMENT"}
        ]);
        let Payload::Messages(m) = hubspot(body.to_string().as_bytes()).unwrap() else {
            panic!("no message");
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].workspace, "62515");
        assert_eq!(m[0].conversation, "7001");
        assert_eq!(m[0].key, "hubspot:m1");
        assert_eq!(m[0].at, 1_796_000_000);
        assert!(hubspot(b"{}").is_err());
    }
}
