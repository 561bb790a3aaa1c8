//! The [`Book`]: this replica's [`Index`], filled by following the prompt
//! stream from "the longest window ago", and [`Book::sync`] — append a mark
//! and wait to read it — after which everything appended before (by any
//! replica) is in the index. The matcher syncs before it decides each
//! batch of replies (which also covers a redelivered reply: whatever its
//! last reader published for it is read by then).

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{BasicProperties, Connection};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{
    index::Index,
    record::{MAX_RECORD, Record},
};
use crate::broker::{
    Names, Publisher,
    streams::{self, Credit, Offset},
};

/// How long a mark may take to come back before the stream is called stuck.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Book {
    index: Mutex<Index>,
    marks: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Prompts and answers older than this are forgotten (a day more than
    /// the longest window, so a late reply is told `expired`, not `no_prompt`).
    keep: i64,
}

/// Stream records read per ack (the prefetch is 2,000).
const ACK_EVERY: u64 = 500;

/// Records read between two prunings of the index, or the time (whichever
/// comes first: a quiet stream still forgets what is past its window).
const PRUNE_EVERY: u64 = 10_000;
const PRUNE_AFTER: Duration = Duration::from_secs(600);

impl Book {
    pub(crate) fn new(longest_window: Duration) -> Self {
        Self {
            index: Mutex::default(),
            marks: Mutex::default(),
            keep: i64::try_from(longest_window.as_secs())
                .unwrap_or(i64::MAX / 2)
                .saturating_add(24 * 3600),
        }
    }

    /// How far back the stream is read: `keep` before now (unix s).
    pub(crate) fn horizon(&self) -> i64 {
        crate::clock::unix_now().saturating_sub(self.keep)
    }

    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        match self.index.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn marks(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        match self.marks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Appends a mark to the stream and waits until this replica has read it.
    pub(crate) async fn sync(&self, publisher: &Publisher, names: &Names) -> anyhow::Result<()> {
        let id = ulid::Ulid::generate().to_string();
        let (tx, rx) = oneshot::channel();
        self.marks().insert(id.clone(), tx);
        let appended = append(publisher, names, &Record::Mark { id: id.clone() }).await;
        if let Err(e) = appended {
            self.marks().remove(&id);
            return Err(anyhow::Error::new(e).context("cannot append a mark to the prompt stream"));
        }
        let read = tokio::time::timeout(SYNC_TIMEOUT, rx).await;
        self.marks().remove(&id);
        match read {
            Ok(Ok(())) => Ok(()),
            _ => Err(anyhow::anyhow!(
                "the prompt stream did not give back a mark within {SYNC_TIMEOUT:?}"
            )),
        }
    }

    /// Follows the prompt stream from `from` (unix s) into the index, until
    /// the stream or the connection fails (the error is returned).
    pub(crate) async fn follow(&self, conn: &Connection, names: &Names) -> anyhow::Error {
        match self.read(conn, names, self.horizon()).await {
            Ok(()) => anyhow::anyhow!("the prompt stream ended"),
            Err(e) => e,
        }
    }

    async fn read(&self, conn: &Connection, names: &Names, from: i64) -> anyhow::Result<()> {
        let stream = names.prompts();
        let (_ch, mut consumer) = streams::consume(conn, &stream, Offset::Since(from), 2000)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("cannot read {stream}")))?;
        let started = std::time::Instant::now();
        let mut credit = Credit::every(ACK_EVERY);
        let mut reported = false;
        let mut pruned = std::time::Instant::now();
        while let Some(next) = consumer.next().await {
            let delivery = next?;
            let read = credit.read(&delivery).await;
            self.take(
                delivery.routing_key.as_str(),
                &delivery.data,
                &mut reported,
                read,
                started,
            );
            if read.is_multiple_of(PRUNE_EVERY) || pruned.elapsed() > PRUNE_AFTER {
                let horizon = self.horizon();
                self.index().prune(horizon);
                pruned = std::time::Instant::now();
            }
        }
        Ok(())
    }

    /// One record of the stream: a prompt or conversation for the index, a
    /// published reply (remembered as answered), or a mark (its waiter woken).
    fn take(
        &self,
        routing_key: &str,
        data: &[u8],
        reported: &mut bool,
        read: u64,
        started: std::time::Instant,
    ) {
        if data.len() > MAX_RECORD {
            warn!(
                bytes = data.len(),
                "a prompt stream record too large to read; skipped"
            );
            return;
        }
        if routing_key.starts_with("replied.") || routing_key.starts_with("reply_ambiguous.") {
            if let Some((id, at)) = reply_id(data) {
                self.index().answered(&id, at);
            }
            return;
        }
        match serde_json::from_slice::<Record>(data) {
            Ok(Record::Mark { id }) => {
                if let Some(waiter) = self.marks().remove(&id) {
                    if !*reported {
                        *reported = true;
                        info!(
                            records = read,
                            prompts = self.index().len(),
                            took_ms =
                                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "prompt stream read; matching replies"
                        );
                    }
                    let _woken = waiter.send(());
                }
            }
            Ok(record) => self.index().apply(record),
            Err(_) => warn!("a prompt stream record that is not one; skipped"),
        }
    }
}

/// A published reply event's `reply.id` and when (unix s).
fn reply_id(data: &[u8]) -> Option<(String, i64)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let id = v.pointer("/reply/id")?.as_str()?.to_owned();
    let at = v
        .get("replied_at")
        .and_then(|t| t.as_str())
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or_else(crate::clock::unix_now, |t| t.unix_timestamp());
    Some((id, at))
}

/// Appends `record` to the prompt stream, confirmed.
pub(crate) async fn append(
    publisher: &Publisher,
    names: &Names,
    record: &Record,
) -> Result<(), crate::broker::PublishError> {
    let body = serde_json::to_vec(record).map_err(|_| crate::broker::PublishError::Nacked)?;
    publisher
        .publish(
            "",
            &names.prompts(),
            &body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
            false,
        )
        .await
        .map(|_| ())
}
