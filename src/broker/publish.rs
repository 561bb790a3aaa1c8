//! Publishing with publisher confirms. A publish counts only when the broker
//! acked it within the publish timeout; a nack is an error, and so is a
//! mandatory message returned as unroutable unless the caller says that is
//! acceptable.

use std::time::Duration;

use tracing::Instrument;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for {exchange} / {routing_key}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// The metric label of this failure.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PublishError::Broker(_) => "broker",
            PublishError::Nacked => "nacked",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::Timeout(_) => "timeout",
        }
    }
}

/// Whether a mandatory message found a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Yes,
    /// Returned as unroutable (only reported when the caller allowed it).
    No,
}

/// Confirm-mode channels for publishing. Cheap to clone; safe to share.
///
/// A publish whose return is a failure (a dead letter, a delayed retry: it
/// must reach its queue) goes through one of a few single-file channels, each with at most
/// one publish outstanding: lapin hands a returned message to whichever
/// confirm completes next on the channel, so with concurrent mandatory
/// publishes a returned message could be reported routed and its job acked
/// and lost (seen in `input::deleting_the_dead_letter_queue…`). On a single-file channel
/// the return can only be its own. Publishes that may be unroutable (result
/// events) share one channel, concurrently.
///
/// A channel that saw a nack is marked stale and replaced by
/// [`Publisher::renew`]: RabbitMQ 3.10 can leave a channel nacking every
/// publish to a quorum queue whose leader died while the channel first
/// published to it, for as long as the channel lives, while a fresh channel
/// publishes at once (seen on the three-node test cluster; `cluster::` tests).
#[derive(Clone)]
pub struct Publisher {
    shared: std::sync::Arc<Slot>,
    single_file: std::sync::Arc<[Slot]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    timeout: Duration,
    /// The RabbitMQ it publishes to.
    server: super::ServerVersion,
    /// Told of every publish the broker refuses (a nack, a return, no
    /// confirm, a channel error): the worker's session then declares the
    /// topology again and replaces channels left nacking, whoever published.
    refused: Option<std::sync::Arc<tokio::sync::Notify>>,
}

struct Slot {
    channel: std::sync::RwLock<Channel>,
    /// Saw a nack: replace at the next [`Publisher::renew`].
    stale: std::sync::atomic::AtomicBool,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Slot {
    async fn open(conn: &Connection) -> Result<Self, lapin::Error> {
        Ok(Self {
            channel: std::sync::RwLock::new(confirm_channel(conn).await?),
            stale: false.into(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    fn channel(&self) -> Channel {
        match self.channel.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, fresh: Channel) -> Channel {
        match self.channel.write() {
            Ok(mut c) => std::mem::replace(&mut *c, fresh),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), fresh),
        }
    }
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Single-file channels for publishes that must be routed.
const SINGLE_FILE_CHANNELS: usize = 8;

impl Publisher {
    /// Opens confirm-mode channels whose publishes fail after `timeout`
    /// without a confirm (a blocked connection, a lost node).
    pub async fn open(conn: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let shared = Slot::open(conn).await?;
        let mut single_file = Vec::with_capacity(SINGLE_FILE_CHANNELS);
        for _ in 0..SINGLE_FILE_CHANNELS {
            single_file.push(Slot::open(conn).await?);
        }
        Ok(Self {
            shared: std::sync::Arc::new(shared),
            single_file: single_file.into(),
            next: Default::default(),
            timeout,
            server: super::ServerVersion::of(conn),
            refused: None,
        })
    }

    /// This publisher, telling `refused` of every publish the broker refuses.
    pub(crate) fn reporting_to(mut self, refused: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.refused = Some(refused);
        self
    }

    /// The RabbitMQ this publisher's connection talks to.
    pub fn server(&self) -> super::ServerVersion {
        self.server
    }

    /// Replaces every channel that saw a nack with a fresh one on `conn`;
    /// returns how many. A replaced channel closes once publishes still
    /// outstanding on it had their time to be confirmed.
    pub async fn renew(&self, conn: &Connection) -> Result<usize, lapin::Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut renewed: usize = 0;
        for slot in std::iter::once(&*self.shared).chain(self.single_file.iter()) {
            if !slot.stale.load(SeqCst) {
                continue;
            }
            let fresh = confirm_channel(conn).await?;
            let _turn = slot.one_at_a_time.lock().await;
            slot.stale.store(false, SeqCst);
            let old = slot.replace(fresh);
            let wait = self.timeout;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                super::close_channel(&old, "replaced after a nack").await;
            });
            renewed = renewed.saturating_add(1);
        }
        Ok(renewed)
    }

    /// Publishes `mandatory` and waits for the broker's confirm. A returned
    /// message is an error unless `allow_unroutable`. With traces on, the
    /// publish is a PRODUCER span whose context goes in the message's
    /// headers (`traceparent`), in place of any it carried.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        allow_unroutable: bool,
    ) -> Result<Routed, PublishError> {
        let published = self
            .publish_traced(exchange, routing_key, body, properties, allow_unroutable)
            .await;
        if published.is_err()
            && let Some(refused) = &self.refused
        {
            refused.notify_one();
        }
        published
    }

    async fn publish_traced(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        allow_unroutable: bool,
    ) -> Result<Routed, PublishError> {
        if !crate::observe::trace::on() {
            return self
                .publish_untraced(exchange, routing_key, body, properties, allow_unroutable)
                .await;
        }
        let span = crate::observe::trace::publish_span(exchange, routing_key);
        let properties = match crate::observe::trace::inject(&span, properties.headers().clone()) {
            Some(headers) => properties.with_headers(headers),
            None => properties,
        };
        let published = self
            .publish_untraced(exchange, routing_key, body, properties, allow_unroutable)
            .instrument(span.clone())
            .await;
        if published.is_err() {
            crate::observe::trace::failed(&span);
        }
        published
    }

    async fn publish_untraced(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        allow_unroutable: bool,
    ) -> Result<Routed, PublishError> {
        let (Some(ex), Some(key)) = (
            super::headers::short(exchange),
            super::headers::short(routing_key),
        ) else {
            return Err(PublishError::Unroutable {
                exchange: exchange.chars().take(64).collect(),
                routing_key: routing_key.chars().take(64).collect(),
            });
        };
        // Must be routed: a channel of its own for the time of the publish.
        let single = if allow_unroutable {
            None
        } else {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.single_file
                .get(i.checked_rem(self.single_file.len()).unwrap_or_default())
        };
        let _turn = match single {
            Some(l) => Some(l.one_at_a_time.lock().await),
            None => None,
        };
        let slot = single.unwrap_or(&self.shared);
        let channel = slot.channel();
        let publish = async {
            channel
                .basic_publish(
                    ex,
                    key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Routed::Yes),
            Confirmation::Ack(Some(_)) if allow_unroutable => Ok(Routed::No),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => {
                slot.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(PublishError::Nacked)
            }
        }
    }

    /// The channel of publishes that may be unroutable.
    pub fn channel(&self) -> Channel {
        self.shared.channel()
    }

    /// Whether every channel is still open (a missing exchange makes the
    /// broker close the channel that published to it).
    pub fn is_open(&self) -> bool {
        std::iter::once(&*self.shared)
            .chain(self.single_file.iter())
            .all(|l| l.channel().status().connected())
    }

    /// Closes every channel.
    pub async fn close(&self) {
        for l in std::iter::once(&*self.shared).chain(self.single_file.iter()) {
            super::close_channel(&l.channel(), "OK").await;
        }
    }
}
