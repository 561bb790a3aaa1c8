//! An exact snapshot of a queue for the dead-letter tools: every message the
//! queue held when the command started, each seen exactly once, nothing that
//! arrived later.
//!
//! How it cannot miss or double-count:
//! 1. **One operator at a time.** The command first declares an exclusive
//!    queue `<queue>.lock`; RabbitMQ lets one connection hold it and drops it
//!    when that connection ends (also on a crash). A second command waits for
//!    it (`--wait`) or stops with a message naming the lock; it never works
//!    on a part.
//! 2. **A marker ends the snapshot.** Holding the lock, the command waits
//!    until the queue has no consumer (a quorum queue hands back a closed
//!    channel's messages when it handles that consumer's end, which may come
//!    just after the lock was released), then publishes
//!    a marker message (header `x-octopods-dlq-marker`, a fresh id) to the
//!    queue with a publisher confirm, then consumes until the marker comes
//!    back, taking deliveries in delivery-tag order (on one channel the tags
//!    count up in the order the queue delivered). Consumers get an explicit
//!    prefetch of 50,000 each, and another is added when all are full: with
//!    prefetch 0 a quorum queue caps a consumer at 2,000 unacknowledged
//!    messages, and `basic.get` costs a Raft round per message. Every message that was in
//!    the queue is ahead of the marker: the previous command's returned
//!    messages were returned before its connection (and lock) went, and a
//!    quorum queue delivers returned messages before any other. Messages
//!    published later are behind it and are handed back untouched.
//! 3. **Held until the end.** Every message seen stays unacknowledged (or is
//!    acked when purged or replayed), so it cannot come round again within
//!    the snapshot; at the end closing the channel hands back all still held.
//!
//! A marker left by a command that died is recognised by its header and
//! removed by the next one.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream::SelectAll};
use lapin::{
    BasicProperties, Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::{
    broker::{self, Publisher, headers},
    config::Config,
};

/// The header that marks the end of a snapshot.
pub(crate) const MARKER: &str = "x-octopods-dlq-marker";
/// How long the whole read may go without a delivery before it fails.
const IDLE: Duration = Duration::from_secs(30);
/// Unacknowledged messages one consumer may hold. Explicit: with prefetch 0
/// a quorum queue caps a consumer at 2,000. Room is granted a consumer at a
/// time as the command gets through the messages, so at most about 1.5 ×
/// this many deliveries wait in memory whatever the queue's length.
const PER_CONSUMER: u16 = 5_000;
/// With no delivery for this long and every consumer full, another
/// consumer is added (more room to hold messages).
const STALL: Duration = Duration::from_millis(300);

/// A queue held for one command.
pub(crate) struct Snapshot {
    /// Holds the lock, and outlives `conn` (see [`Snapshot::close`]).
    lock: Connection,
    /// Reads (and acks, publishes) the queue.
    conn: Connection,
    channel: Channel,
    consumers: SelectAll<Consumer>,
    consumer_count: u32,
    /// Deliveries received out of tag order, waiting for the ones before.
    early: BTreeMap<u64, Delivery>,
    /// The next delivery tag to hand out (tags on one channel count from 1
    /// in the order the queue delivered).
    next_tag: u64,
    /// Messages received so far (held, or acked by the command).
    received: u64,
    /// Messages of the snapshot handed to the command (markers not counted).
    handed_out: u64,
    marker: String,
    done: bool,
    pub(crate) queue: String,
    /// Markers of earlier commands that died, removed.
    pub(crate) stale_markers: u32,
    publisher: Publisher,
}

impl Snapshot {
    /// Takes the lock (waiting up to `wait`), puts the marker, subscribes.
    pub(crate) async fn open(config: &Config, queue: &str, wait: Duration) -> anyhow::Result<Self> {
        let lock_conn = broker::connect(&config.broker, "dlq").await?;
        lock(&lock_conn, queue, wait).await?;
        let conn = broker::connect(&config.broker, "dlq-read").await?;
        let channel = conn.create_channel().await?;
        let consumers = consumers_of(&channel, queue).await.with_context(|| {
            format!("queue {queue} does not exist (run `octopods-worker topology`)")
        })?;
        settled(&channel, queue, consumers).await?;
        let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
        let marker = ulid::Ulid::generate().to_string();
        let mut h = FieldTable::default();
        h.insert(MARKER.into(), headers::text_value(&marker));
        publisher
            .publish(
                "",
                queue,
                b"",
                BasicProperties::default().with_headers(h),
                false,
            )
            .await
            .context("cannot put the snapshot marker in the queue")?;
        channel
            .basic_qos(PER_CONSUMER, BasicQosOptions { global: false })
            .await?;
        let mut snapshot = Self {
            lock: lock_conn,
            conn,
            channel,
            consumers: SelectAll::new(),
            consumer_count: 0,
            early: BTreeMap::new(),
            next_tag: 1,
            received: 0,
            handed_out: 0,
            marker,
            done: false,
            queue: queue.to_owned(),
            stale_markers: 0,
            publisher,
        };
        snapshot.add_consumer().await?;
        Ok(snapshot)
    }

    async fn add_consumer(&mut self) -> anyhow::Result<()> {
        self.consumer_count = self.consumer_count.saturating_add(1);
        let tag = format!("octopods-dlq-{}-{}", self.marker, self.consumer_count);
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumers.push(consumer);
        Ok(())
    }

    /// The next delivery in queue order (by delivery tag).
    async fn next_in_order(&mut self) -> anyhow::Result<Delivery> {
        // More room once half of the last consumer's is handed out.
        let room = u64::from(self.consumer_count).saturating_mul(u64::from(PER_CONSUMER));
        if self.next_tag.saturating_add(u64::from(PER_CONSUMER / 2)) > room {
            self.add_consumer().await?;
        }
        let started = Instant::now();
        loop {
            if let Some(d) = self.early.remove(&self.next_tag) {
                self.next_tag = self.next_tag.saturating_add(1);
                return Ok(d);
            }
            match tokio::time::timeout(STALL, self.consumers.next()).await {
                Ok(Some(d)) => {
                    let d = d?;
                    self.received = self.received.saturating_add(1);
                    self.early.insert(d.delivery_tag, d);
                }
                Ok(None) => bail!(
                    "the broker ended the snapshot of {} before its marker came back",
                    self.queue
                ),
                Err(_) if started.elapsed() >= IDLE => bail!(
                    "no message from {} for {IDLE:?} and the snapshot marker did not come back: \
                     someone consumed or purged the queue meanwhile",
                    self.queue
                ),
                Err(_) => {
                    let room =
                        u64::from(self.consumer_count).saturating_mul(u64::from(PER_CONSUMER));
                    if self.received >= room.saturating_sub(1) {
                        self.add_consumer().await?;
                    }
                }
            }
        }
    }

    /// The next message of the snapshot; `None` once the marker came back.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let delivery = self.next_in_order().await?;
            let h = delivery.properties.headers().as_ref();
            match h.and_then(|t| t.inner().get(MARKER)) {
                None => {
                    self.handed_out = self.handed_out.saturating_add(1);
                    return Ok(Some(delivery));
                }
                Some(AMQPValue::LongString(id)) if id.as_bytes() == self.marker.as_bytes() => {
                    acked(delivery.acker.ack(BasicAckOptions::default()).await?)?;
                    self.done = true;
                    return Ok(None);
                }
                Some(_) => {
                    // A marker of a command that died: remove it.
                    acked(delivery.acker.ack(BasicAckOptions::default()).await?)?;
                    self.stale_markers = self.stale_markers.saturating_add(1);
                }
            }
        }
    }

    /// The publisher of this command's connection (for replays).
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Hands back everything still held (including what arrived after the
    /// marker), unchanged, and closes — which cancels the consumers and
    /// releases the lock.
    ///
    /// `acked`: how many the command acked (purged or replayed). The lock
    /// is released only once the queue counts as ready at least every
    /// message the snapshot handed out and did not ack, so the next command
    /// never puts its marker ahead of messages still on their way back. The
    /// lock lives on a connection of its own: the reading connection closes
    /// first (that returns everything it held, on every version), the queue
    /// is seen to count it, and only then does the lock go. (The false
    /// "0 dead letters" of issue 39 on RabbitMQ 4.0 was the dead letters
    /// being dropped at the queue's default delivery limit of 20 — fixed
    /// where the queue is declared, `topology::Plan::for_server` — but the
    /// order here is what makes "every message is ahead of the marker" hold
    /// on any version.)
    /// A quorum queue applies acks as low-priority commands, while the end of
    /// a channel's consumers is handled at once: closing right after the last
    /// acks returned acked messages to the queue (seen in CI: "purged 5000",
    /// then 118 and 132 of them back). The channel therefore stays open a
    /// moment for the acks to be applied before it closes. A mitigation,
    /// not a proof: RabbitMQ offers no way to see that a settle was applied.
    ///
    /// Never an error: the messages still held go back to the queue however
    /// this ends — the channel's close, else the connection's, else the
    /// broker's own end of a lost connection. The consumers stay subscribed
    /// until the channel closes: cancelling them first (or dropping them,
    /// which cancels in the background) would end them before the channel's
    /// messages are returned, and the next command, which waits for the queue
    /// to have no consumer, could start before everything was back. (A close
    /// racing dropped consumers' cancels also failed with "invalid channel
    /// state: Closing (basic.cancel)", a false alarm.)
    pub(crate) async fn close(self, acked: u64) {
        drop(self.early);
        if acked > 0 {
            tokio::time::sleep(SETTLE_GRACE).await;
        }
        // The reading connection's end ends its consumers and returns every
        // unacknowledged message; the lock's connection outlives it. (The
        // consumers are dropped after: dropping them first would cancel them
        // in the background, racing the close.)
        broker::close(&self.conn, 200, "OK").await;
        drop(self.consumers);
        drop(self.channel);
        if let Ok(look) = self.lock.create_channel().await {
            let deadline = crate::clock::after(Duration::from_secs(5));
            while consumers_of(&look, &self.queue).await.is_ok_and(|n| n > 0)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Nothing else consumes this queue while the lock is held, so
            // its ready count only grows (new dead letters) from here.
            let held = self.handed_out.saturating_sub(acked);
            let deadline = crate::clock::after(RETURN_WAIT);
            loop {
                match broker::inspect(&look, &self.queue).await {
                    Ok((ready, _)) if u64::from(ready) >= held => break,
                    Ok((ready, _)) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(
                            ready,
                            held,
                            "the queue did not show every message handed back within {RETURN_WAIT:?}; releasing the lock"
                        );
                        break;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => break,
                }
            }
            // Release the lock explicitly: RabbitMQ deletes a closed
            // connection's exclusive queues a moment after the close, and a
            // command started right after this one exits (a script, an
            // operator's next line) found it still held ("another dlq command
            // is working"; seen in CI). A delete is done when it is answered.
            if let Err(e) = look
                .queue_delete(lock_name(&self.queue).as_str().into(), Default::default())
                .await
            {
                tracing::info!(error = %e, "releasing the lock failed; it goes with the connection");
            }
        }
        broker::close(&self.lock, 200, "OK").await;
    }
}

/// How long the channel stays open after the last ack (see [`Snapshot::close`]).
const SETTLE_GRACE: Duration = Duration::from_secs(1);
/// Longest a closing snapshot waits for the queue to count what it handed back.
const RETURN_WAIT: Duration = Duration::from_secs(10);

/// lapin answers `false` for an ack it did not send (the delivery's channel
/// failed): the message is not deleted, and the command must not count it.
pub(crate) fn acked(sent: bool) -> anyhow::Result<()> {
    if sent {
        Ok(())
    } else {
        anyhow::bail!(
            "an acknowledgement could not be sent (the channel failed); the message stays in the queue"
        )
    }
}

/// Waits until nobody consumes the queue. A quorum queue returns a closed
/// channel's unacknowledged messages when it handles that consumer's end,
/// which can come after the lock was released: once the queue has no
/// consumer, everything an earlier command held is back. A consumer that
/// is not a dlq command (it would hold messages the snapshot cannot see)
/// makes the command refuse.
async fn settled(channel: &Channel, queue: &str, mut consumers: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    while consumers > 0 {
        if started.elapsed() >= Duration::from_secs(15) {
            bail!(
                "{queue} has {consumers} consumer(s) that are not dlq commands; messages they hold \
                 could not be seen. Stop them, then run the command again"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        consumers = consumers_of(channel, queue).await?;
    }
    Ok(())
}

/// How many consumers `queue` has (a passive declare: it must exist).
async fn consumers_of(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    Ok(broker::inspect(channel, queue).await?.1)
}

/// The lock queue of `queue` (see the module's docs).
fn lock_name(queue: &str) -> String {
    format!("{queue}.lock")
}

/// Declares the exclusive lock queue, retrying while another connection
/// holds it, for up to `wait`.
async fn lock(conn: &Connection, queue: &str, wait: Duration) -> anyhow::Result<()> {
    let name = lock_name(queue);
    let started = Instant::now();
    let mut told = false;
    loop {
        let ch = conn.create_channel().await?;
        let declared = ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("RESOURCE_LOCKED") => {
                if started.elapsed() >= wait {
                    bail!(
                        "another dlq command is working on {queue} (it holds {name}); nothing was done. \
                         Run again when it has finished, or wait for it with --wait DURATION"
                    );
                }
                if !told {
                    eprintln!(
                        "… another dlq command is working on {queue}; waiting up to {} for it",
                        humantime::format_duration(wait)
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot take the lock {name}")));
            }
        }
    }
}
