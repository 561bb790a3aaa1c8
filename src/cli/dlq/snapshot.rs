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
//! 2. **A marker ends the snapshot.** Holding the lock, the command publishes
//!    a marker message (header `x-octopods-dlq-marker`, a fresh id) to the
//!    queue with a publisher confirm, then reads with `basic.get` (a quorum
//!    queue caps a consumer at 2,000 unacknowledged messages; gets are not
//!    capped) until the marker comes back. Every message that was in
//!    the queue is ahead of the marker: the previous command's returned
//!    messages were returned before its connection (and lock) went, and a
//!    quorum queue delivers returned messages before any other. Messages
//!    published later are behind it and are handed back untouched.
//! 3. **Held until the end.** Every message seen stays unacknowledged (or is
//!    acked when purged or replayed), so it cannot come round again within
//!    the snapshot; at the end all still held go back in one `nack`.
//!
//! A marker left by a command that died is recognised by its header and
//! removed by the next one.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::{
    broker::{self, Publisher, headers},
    config::Config,
};

/// The header that marks the end of a snapshot.
pub(crate) const MARKER: &str = "x-octopods-dlq-marker";
/// How long one read may take.
const IDLE: Duration = Duration::from_secs(30);

/// A queue held for one command.
pub(crate) struct Snapshot {
    conn: Connection,
    channel: Channel,
    marker: String,
    pub(crate) queue: String,
    /// Markers of earlier commands that died, removed.
    pub(crate) stale_markers: u32,
    publisher: Publisher,
}

impl Snapshot {
    /// Takes the lock (waiting up to `wait`), puts the marker, subscribes.
    pub(crate) async fn open(config: &Config, queue: &str, wait: Duration) -> anyhow::Result<Self> {
        let conn = broker::connect(&config.broker, "dlq").await?;
        lock(&conn, queue, wait).await?;
        let channel = conn.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!("queue {queue} does not exist (run `octopods-worker topology`)")
            })?;
        let publisher = Publisher::open(&conn, config.publish_timeout()).await?;
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
        Ok(Self {
            conn,
            channel,
            marker,
            queue: queue.to_owned(),
            stale_markers: 0,
            publisher,
        })
    }

    /// The next message of the snapshot; `None` once the marker came back.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        loop {
            // `basic.get`, not a consumer: a quorum queue gives a consumer at
            // most 2000 unacknowledged messages, and the snapshot holds all.
            let got = tokio::time::timeout(
                IDLE,
                self.channel.basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                ),
            )
            .await;
            let delivery = match got {
                Ok(Ok(Some(m))) => m.delivery,
                Ok(Ok(None)) => bail!(
                    "{} ran empty before the snapshot marker came back: someone consumed or purged the queue meanwhile",
                    self.queue
                ),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!(
                    "no answer from the broker for {IDLE:?} while reading {}",
                    self.queue
                ),
            };
            let h = delivery.properties.headers().as_ref();
            match h.and_then(|t| t.inner().get(MARKER)) {
                None => return Ok(Some(delivery)),
                Some(AMQPValue::LongString(id)) if id.as_bytes() == self.marker.as_bytes() => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    return Ok(None);
                }
                Some(_) => {
                    // A marker of a command that died: remove it.
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    self.stale_markers = self.stale_markers.saturating_add(1);
                }
            }
        }
    }

    /// The publisher of this command's connection (for replays).
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Stops consuming, hands back everything still held, unchanged, and
    /// closes (which releases the lock).
    pub(crate) async fn close(self) -> anyhow::Result<()> {
        self.channel
            .basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
        drop(self.channel.close(200, "OK".into()).await);
        drop(self.conn.close(200, "OK".into()).await);
        Ok(())
    }
}

/// Declares the exclusive lock queue, retrying while another connection
/// holds it, for up to `wait`.
async fn lock(conn: &Connection, queue: &str, wait: Duration) -> anyhow::Result<()> {
    let name = format!("{queue}.lock");
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
