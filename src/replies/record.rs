//! What the prompt stream holds (`<prefix>.prompts`, docs/contract.md §15):
//! one JSON record per message, and every `replied` / `reply_ambiguous`
//! event (bound from the results exchange). Read from "the longest window
//! ago" at start, it is everything the matcher knows: no other datastore.
//!
//! A prompt's phone is never in the stream: only a keyed hash of its digits
//! ([`phone_key`]), with the channel's webhook signing secret as the key, so
//! whoever reads the broker cannot enumerate ten billion numbers against it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::{config::Secret, job::interactive::Choice};

/// The largest record read back; larger ones are skipped (a prompt is at
/// most ~10 options of 24 characters, ids of 256, 4 KiB of metadata).
pub(crate) const MAX_RECORD: usize = 64 * 1024;

/// One record of the prompt stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub(crate) enum Record {
    /// A prompt was sent: it can be answered for the channel's window.
    Prompt(Prompt),
    /// The status poll saw the prompt's Intercom conversation.
    Conversation {
        channel: String,
        job_id: String,
        conversation_id: String,
    },
    /// A replica's marker: when it reads its own, it has read everything
    /// appended before it.
    Mark { id: String },
    /// What a customer message that published no stream-bound event came
    /// to (`unmatched`, `no_prompt`, `expired`), for the console's counts:
    /// never the text, never the phone.
    Outcome {
        channel: String,
        outcome: String,
        /// Unix seconds.
        at: i64,
    },
}

/// A sent prompt, as the matcher needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Prompt {
    pub channel: String,
    pub job_id: String,
    /// [`phone_key`] of the destination.
    pub phone: String,
    pub options: Vec<Choice>,
    pub message_id: String,
    #[serde(default)]
    pub channel_message_id: Option<String>,
    /// RFC 3339: the window counts from here.
    pub sent_at: String,
    /// The job's metadata. (Not a `RawValue`: an internally tagged enum
    /// cannot hold one — every record would fail to read.)
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// The keyed hash a phone is stored and looked up by: HMAC-SHA-256 of its
/// digits under the channel's signing secret, first 16 bytes, hex.
pub(crate) fn phone_key(secret: &Secret, digits: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        // HMAC takes a key of any length: unreachable, and harmless if not.
        return String::new();
    };
    mac.update(b"octopods-phone\0");
    mac.update(digits.as_bytes());
    let bytes = mac.finalize().into_bytes();
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_is_keyed_by_the_secret_and_never_in_clear() {
        let a = phone_key(&Secret::new("s1"), "15551234567");
        let b = phone_key(&Secret::new("s2"), "15551234567");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(!a.contains("5551234567"));
        assert_eq!(a, phone_key(&Secret::new("s1"), "15551234567"));
    }

    #[test]
    fn a_prompt_record_written_is_a_prompt_the_index_finds() {
        let prompt = Prompt {
            channel: "eu".into(),
            job_id: "j1".into(),
            phone: "p".into(),
            options: vec![Choice {
                id: "yes".into(),
                title: "Yes".into(),
            }],
            message_id: "m".into(),
            channel_message_id: Some("wamid.1".into()),
            sent_at: "2026-12-01T10:00:00.123Z".into(),
            metadata: Some(serde_json::json!({"order_id": "1", "nested": {"a": [1, 2]}})),
        };
        let bytes = serde_json::to_vec(&Record::Prompt(prompt)).unwrap();
        let record: Record = serde_json::from_slice(&bytes).unwrap();
        let mut index = crate::replies::index::Index::default();
        index.apply(record);
        assert_eq!(index.len(), 1);
        let key = ("eu".into(), "j1".into());
        let open = index.prompt(&key).unwrap();
        assert_eq!(
            open.metadata.as_deref(),
            Some(r#"{"order_id":"1","nested":{"a":[1,2]}}"#)
        );
    }

    #[test]
    fn records_read_back_as_written() {
        let r = Record::Conversation {
            channel: "eu".into(),
            job_id: "j".into(),
            conversation_id: "c".into(),
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#""record":"conversation""#));
        assert!(matches!(
            serde_json::from_slice::<Record>(&bytes).unwrap(),
            Record::Conversation { conversation_id, .. } if conversation_id == "c"
        ));
    }
}
