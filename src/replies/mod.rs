//! Replies (docs/contract.md §15): the customer's tap comes back to the
//! shop as a `replied` event for the right job.
//!
//! ```text
//! send ─► prompt record ─► <prefix>.prompts (stream) ─► every replica's Book
//! Intercom / HubSpot ─► receiver (verify, confirm) ─► <prefix>.replies
//!        ─► matcher (one active) ─► lookup ─► Book ─► replied / reply_ambiguous
//!                                                    └─► also into the stream
//! ```
//!
//! - [`text`]: how titles, replies and phones compare.
//! - [`record`]: what the prompt stream holds; the keyed phone hash.
//! - [`index`]: the open prompts in memory, and what a reply comes to.
//! - [`book`]: the index as the stream fills it, and catching up to a mark.
//! - [`inbound`]: a webhook's payload read into customer messages.
//! - [`signature`]: the platforms' signatures.
//! - [`receiver`]: the HTTP listener.
//! - [`lookup`]: the platforms' APIs (a contact's phone, a message's text).
//! - [`matcher`]: the consumer of the replies queue.

pub(crate) mod book;
pub(crate) mod inbound;
pub(crate) mod index;
pub(crate) mod lookup;
pub(crate) mod matcher;
pub(crate) mod receiver;
pub(crate) mod record;
pub(crate) mod signature;
pub(crate) mod text;

use std::{sync::Arc, time::Duration};

use crate::config::{Config, Platform, ReplySecrets};

/// A reply-tracking channel, as the matcher needs it.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub name: Arc<str>,
    pub platform: Platform,
    pub workspace: String,
    pub api_url: String,
    pub window: Duration,
    pub unmatched_events: bool,
    pub secrets: ReplySecrets,
}

/// Every reply-tracking channel of `config`, with its secrets (read by
/// [`Config::reply_secrets`], channel order).
pub(crate) fn tracked(config: &Config, secrets: &[Option<ReplySecrets>]) -> Vec<Tracked> {
    config
        .channels
        .iter()
        .zip(secrets)
        .filter_map(|(c, s)| {
            let r = c.replies.as_ref()?;
            Some(Tracked {
                name: c.name.as_str().into(),
                platform: r.platform,
                workspace: r.workspace.clone(),
                api_url: r.api_url().to_owned(),
                window: r.window,
                unmatched_events: r.unmatched_events,
                secrets: s.clone()?,
            })
        })
        .collect()
}

/// The longest window of `tracked` (how far back the stream is read).
pub(crate) fn longest_window(tracked: &[Tracked]) -> Duration {
    tracked.iter().map(|t| t.window).max().unwrap_or_default()
}
