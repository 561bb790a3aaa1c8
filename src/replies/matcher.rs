//! The matcher: the one active consumer of `<prefix>.replies` (single
//! active consumer, so replies are matched one at a time across replicas).
//! Each customer message is enriched (the phone, HubSpot's text: a failed
//! lookup waits in a delay queue and comes back, never dropped), matched
//! against the [`Book`](super::book::Book) — by the Intercom conversation
//! and the title, else by the phone and the title — and settled: its event
//! confirmed, then the ack. The same message twice publishes one event.
//!
//! Replies are taken in batches, and the book catches up with the prompt
//! stream before each batch is decided: a prompt is in the stream before
//! its `sent` event, so before the customer can have answered it, and a
//! mark appended after the batch was taken comes after every such prompt.
//! Deciding on a book that lags would answer the one prompt read so far
//! where two are open (`replied` where `reply_ambiguous` is right).

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    Tracked,
    book::Book,
    inbound::Inbound,
    index::{Found, JobKey},
    lookup::{Looked, Lookup},
    record::{Record, phone_key},
    text::{normalise, phone_digits},
};
use crate::{
    broker::{Names, PublishError, Publisher, headers, topology::delay_label},
    config::Platform,
    events::{RepliedEvent, ReplyAmbiguousEvent, ReplyIds, ReplyUnmatchedEvent, timestamp},
    observe::{logging::escape, metrics::Metrics},
    outcome::EventKind,
};

/// Everything the matcher of one replica works with.
pub(crate) struct Matcher {
    pub(crate) tracked: Arc<[Tracked]>,
    pub(crate) book: Arc<Book>,
    pub(crate) lookup: Arc<Lookup>,
    pub(crate) names: Names,
    pub(crate) metrics: Arc<Metrics>,
    /// The retry delays: a failed lookup waits in these, one after another.
    pub(crate) delays: Vec<Duration>,
    pub(crate) replica: String,
}

/// Replies taken from the queue per catch-up with the prompt stream (the
/// prefetch is the same).
const BATCH: u16 = 32;

/// Back to the queue, for this replica or the next active one.
async fn back(delivery: &Delivery) {
    drop(
        delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await,
    );
}

/// After a failure the broker may still be in: one pause, then every one
/// of `deliveries` goes back to its queue.
async fn give_back(deliveries: impl IntoIterator<Item = Delivery>) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    for d in deliveries {
        back(&d).await;
    }
}

/// What one customer message comes to.
enum Decided {
    /// Publish these (kind, channel, JSON) and count the outcome on the channel.
    Settled {
        outcome: &'static str,
        channel: Arc<str>,
        event: Option<(EventKind, Vec<u8>, String)>,
    },
    /// A lookup failed: try again after a delay.
    Later(String),
    /// Not the customer's (a HubSpot message the shop sent).
    Ignored,
}

impl Matcher {
    /// Catches up with the prompt stream, then matches replies until
    /// `stop` or a broker failure (returned).
    pub(crate) async fn run(
        &self,
        conn: &Connection,
        publisher: &Publisher,
        stop: CancellationToken,
    ) -> anyhow::Error {
        match self.serve(conn, publisher, stop).await {
            Ok(()) => anyhow::anyhow!("the replies consumer ended"),
            Err(e) => e,
        }
    }

    async fn serve(
        &self,
        conn: &Connection,
        publisher: &Publisher,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        self.book.sync(publisher, &self.names).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(BATCH, BasicQosOptions::default()).await?;
        let queue = self.names.replies();
        let tag = headers::truncate(format!("octopods-worker-{}-replies", self.replica), 255);
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(queue = %queue, "matching replies (one replica at a time is active)");
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                n = consumer.next() => n,
            };
            let Some(delivery) = next else {
                return Err(anyhow::anyhow!("the broker cancelled the replies consumer"));
            };
            let mut batch = vec![delivery?];
            while batch.len() < usize::from(BATCH) {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => batch.push(d),
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) | None => break,
                }
            }
            // Every prompt sent before these replies came in is in the
            // stream before this mark: once it is read, none is missing.
            if let Err(e) = self.book.sync(publisher, &self.names).await {
                warn!(error = %format!("{e:#}"), "cannot catch up with the prompt stream; the replies go back to their queue");
                give_back(batch).await;
                continue;
            }
            let mut batch = batch.into_iter();
            while let Some(d) = batch.next() {
                if let Err(e) = self.handle(&d, publisher).await {
                    // A refused publish has told the session
                    // (Publisher::reporting_to). The rest of the batch
                    // would meet the same broker: all of it goes back,
                    // after one pause, not one pause each.
                    warn!(error = %format!("{e:#}"), "cannot settle a reply; it and the rest of its batch go back to their queue");
                    give_back(std::iter::once(d).chain(batch)).await;
                    break;
                }
                d.acker.ack(BasicAckOptions::default()).await?;
            }
        }
    }

    /// One delivery: decided, its event confirmed. `Ok` means ack it.
    async fn handle(&self, delivery: &Delivery, publisher: &Publisher) -> anyhow::Result<()> {
        let Ok(inbound) = serde_json::from_slice::<Inbound>(&delivery.data) else {
            warn!(
                bytes = delivery.data.len(),
                "not a reply the receiver queued; dropped"
            );
            return Ok(());
        };
        if self.book.index().was_answered(&inbound.key) {
            info!(reply = %escape(&inbound.key), "a reply already answered (delivered again); nothing published");
            return Ok(());
        }
        let channels: Vec<&Tracked> = self
            .tracked
            .iter()
            .filter(|t| t.platform == inbound.platform && t.workspace == inbound.workspace)
            .collect();
        let Some(first) = channels.first() else {
            self.metrics.reply("unknown", "no_prompt");
            return Ok(());
        };
        match self.decide(&inbound, &channels).await? {
            Decided::Settled {
                outcome,
                channel,
                event,
            } => {
                if let Some((kind, body, correlation)) = event {
                    let properties = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_message_id(
                            headers::truncate(format!("{}:{}", kind.as_str(), inbound.key), 255)
                                .into(),
                        )
                        .with_correlation_id(headers::truncate(correlation, 255).into());
                    let key = format!("{}.{channel}", kind.as_str());
                    let allow_unroutable = kind == EventKind::ReplyUnmatched;
                    publisher
                        .publish(
                            &self.names.results(),
                            &key,
                            &body,
                            properties,
                            allow_unroutable,
                        )
                        .await?;
                    if kind != EventKind::ReplyUnmatched {
                        self.book
                            .index()
                            .answered(&inbound.key, crate::clock::unix_now());
                    }
                }
                if !matches!(outcome, "matched" | "ambiguous") {
                    // No event in the stream says it: a record does, for the console.
                    let record = Record::Outcome {
                        channel: channel.to_string(),
                        outcome: outcome.into(),
                        at: crate::clock::unix_now(),
                    };
                    super::book::append(publisher, &self.names, &record).await?;
                }
                self.metrics.reply(&channel, outcome);
                let after = crate::clock::unix_now().saturating_sub(inbound.at);
                self.metrics.reply_matched_after(
                    inbound.platform.as_str(),
                    Duration::from_secs(u64::try_from(after).unwrap_or_default()),
                );
                info!(channel = %channel, outcome, reply = %escape(&inbound.key), "reply settled");
            }
            Decided::Later(why) => self.later(inbound, &why, first, publisher).await?,
            Decided::Ignored => {}
        }
        Ok(())
    }

    /// A lookup failed: the message goes to the next delay queue and comes
    /// back, until it is older than the longest window (then `expired`).
    async fn later(
        &self,
        mut inbound: Inbound,
        why: &str,
        first: &Tracked,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        let window =
            i64::try_from(super::longest_window(&self.tracked).as_secs()).unwrap_or(i64::MAX);
        if crate::clock::unix_now().saturating_sub(inbound.at) > window {
            warn!(reply = %escape(&inbound.key), error = %escape(why), "a reply's lookup kept failing past the window; counted expired");
            self.metrics.reply(&first.name, "expired");
            return Ok(());
        }
        let i = usize::try_from(inbound.lookups).unwrap_or(usize::MAX);
        let Some(delay) = self.delays.get(i).or(self.delays.last()).copied() else {
            return Err(PublishError::Nacked);
        };
        inbound.lookups = inbound.lookups.saturating_add(1);
        warn!(reply = %escape(&inbound.key), error = %escape(why), lookups = inbound.lookups, retry_in = %delay_label(delay), "cannot look the reply up; trying again later");
        let mut h = FieldTable::default();
        h.insert(
            headers::DELAY.into(),
            headers::text_value(&delay_label(delay)),
        );
        let body = serde_json::to_vec(&inbound).map_err(|_| PublishError::Nacked)?;
        publisher
            .publish(
                &self.names.retry_exchange(),
                &self.names.replies(),
                &body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_headers(h),
                false,
            )
            .await
            .map(|_| ())
    }

    /// Matches one message: by its conversation, else by its phone.
    async fn decide(&self, inbound: &Inbound, channels: &[&Tracked]) -> anyhow::Result<Decided> {
        let Some(first) = channels.first() else {
            return Ok(Decided::Ignored);
        };
        let (phone, text) = match inbound.platform {
            Platform::Intercom => {
                let text = inbound.text.clone();
                let found = self.by_conversation(inbound, channels, text.as_deref());
                if found.settles() {
                    return Ok(self.settle(
                        found,
                        "conversation",
                        inbound,
                        channels,
                        text.as_deref(),
                    ));
                }
                let phone = match &inbound.contact {
                    Some(contact) => {
                        let (status, looked) = self
                            .lookup
                            .intercom_phone(&first.api_url, &first.secrets.token, contact)
                            .await;
                        self.metrics.reply_lookup("intercom", status);
                        match looked {
                            Looked::Found(phone) => phone,
                            Looked::Gone => None,
                            Looked::Later(why) => return Ok(Decided::Later(why)),
                        }
                    }
                    None => None,
                };
                (phone, text)
            }
            Platform::Hubspot => {
                let (status, looked) = self
                    .lookup
                    .hubspot_message(
                        &first.api_url,
                        &first.secrets.token,
                        &inbound.conversation,
                        inbound.key.trim_start_matches("hubspot:"),
                    )
                    .await;
                self.metrics.reply_lookup("hubspot", status);
                match looked {
                    Looked::Found(m) if !m.incoming => return Ok(Decided::Ignored),
                    Looked::Found(m) => (m.phone, m.text),
                    Looked::Gone => (None, None),
                    Looked::Later(why) => return Ok(Decided::Later(why)),
                }
            }
        };
        let found = self.by_phone(inbound, channels, phone.as_deref(), text.as_deref());
        Ok(self.settle(found, "phone", inbound, channels, text.as_deref()))
    }

    fn by_conversation(
        &self,
        inbound: &Inbound,
        channels: &[&Tracked],
        text: Option<&str>,
    ) -> Found {
        let Some(title) = text.and_then(normalise) else {
            return Found::NoPrompt;
        };
        let names: Vec<&str> = channels.iter().map(|c| &*c.name).collect();
        self.book.index().in_conversation(
            &inbound.conversation,
            &names,
            &title,
            crate::clock::unix_now(),
            &|ch| window_of(channels, ch),
        )
    }

    fn by_phone(
        &self,
        inbound: &Inbound,
        channels: &[&Tracked],
        phone: Option<&str>,
        text: Option<&str>,
    ) -> Found {
        let conversation = self.by_conversation(inbound, channels, text);
        let (Some(digits), Some(title)) = (phone.and_then(phone_digits), text.and_then(normalise))
        else {
            return conversation;
        };
        if conversation.settles() {
            return conversation;
        }
        let phones: Vec<(Arc<str>, String)> = channels
            .iter()
            .map(|c| (c.name.clone(), phone_key(&c.secrets.signing, &digits)))
            .collect();
        let by_phone =
            self.book
                .index()
                .to_phone(&phones, &title, crate::clock::unix_now(), &|ch| {
                    window_of(channels, ch)
                });
        by_phone.or(conversation)
    }

    /// The event and the count for what a message came to.
    fn settle(
        &self,
        found: Found,
        by: &str,
        inbound: &Inbound,
        channels: &[&Tracked],
        text: Option<&str>,
    ) -> Decided {
        let Some(first) = channels.first() else {
            return Decided::Ignored;
        };
        let ids = ReplyIds {
            platform: inbound.platform.as_str().into(),
            id: inbound.key.clone(),
            conversation_id: inbound.conversation.clone(),
        };
        let replied_at = time::OffsetDateTime::from_unix_timestamp(inbound.at)
            .map_or_else(|_| timestamp(time::OffsetDateTime::now_utc()), timestamp);
        match found {
            Found::Matched { prompt, option } => self.replied(&prompt, option, by, ids, replied_at),
            Found::Ambiguous(keys) => {
                let index = self.book.index();
                let title = keys
                    .first()
                    .and_then(|k| index.prompt(k))
                    .and_then(|p| {
                        let wanted = text.and_then(normalise)?;
                        p.options
                            .iter()
                            .find(|o| *o.normalised == *wanted)
                            .map(|o| o.title.to_string())
                    })
                    .unwrap_or_default();
                let channel = keys
                    .first()
                    .map_or_else(|| first.name.clone(), |k| k.0.clone());
                let event = ReplyAmbiguousEvent {
                    event: EventKind::ReplyAmbiguous,
                    channel: channel.to_string(),
                    job_ids: keys.iter().map(|k| k.1.to_string()).collect(),
                    title,
                    replied_at,
                    reply: ids,
                };
                settled(
                    "ambiguous",
                    channel,
                    EventKind::ReplyAmbiguous,
                    &event,
                    String::new(),
                )
            }
            Found::Unmatched if first.unmatched_events => {
                let event = ReplyUnmatchedEvent {
                    event: EventKind::ReplyUnmatched,
                    channel: first.name.to_string(),
                    text: text
                        .map(|t| super::text::strip_markup(t).trim().to_owned())
                        .unwrap_or_default(),
                    replied_at,
                    reply: ids,
                };
                settled(
                    "unmatched",
                    first.name.clone(),
                    EventKind::ReplyUnmatched,
                    &event,
                    String::new(),
                )
            }
            other => Decided::Settled {
                outcome: match other {
                    Found::Unmatched => "unmatched",
                    Found::Expired => "expired",
                    _ => "no_prompt",
                },
                channel: first.name.clone(),
                event: None,
            },
        }
    }

    fn replied(
        &self,
        prompt: &JobKey,
        option: usize,
        by: &str,
        reply: ReplyIds,
        replied_at: String,
    ) -> Decided {
        let index = self.book.index();
        let Some((open, choice)) = index
            .prompt(prompt)
            .and_then(|p| Some((p, p.options.get(option)?)))
        else {
            return Decided::Settled {
                outcome: "no_prompt",
                channel: prompt.0.clone(),
                event: None,
            };
        };
        let event = RepliedEvent {
            event: EventKind::Replied,
            job_id: prompt.1.to_string(),
            channel: prompt.0.to_string(),
            option: choice.choice(),
            replied_at,
            matched_by: by.into(),
            reply,
            message_id: open.message_id.to_string(),
            channel_message_id: open.channel_message_id.as_deref().map(str::to_owned),
            metadata: open
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
        };
        settled(
            "matched",
            prompt.0.clone(),
            EventKind::Replied,
            &event,
            prompt.1.to_string(),
        )
    }
}

fn settled(
    outcome: &'static str,
    channel: Arc<str>,
    kind: EventKind,
    event: &impl Serialize,
    correlation: String,
) -> Decided {
    Decided::Settled {
        outcome,
        channel,
        event: serde_json::to_vec(event)
            .ok()
            .map(|b| (kind, b, correlation)),
    }
}

fn window_of(channels: &[&Tracked], channel: &str) -> Option<i64> {
    channels
        .iter()
        .find(|c| &*c.name == channel)
        .map(|c| i64::try_from(c.window.as_secs()).unwrap_or(i64::MAX))
}
