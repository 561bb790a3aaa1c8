//! Publishing with publisher confirms. A publish counts only when the broker
//! acked it within the publish timeout; a nack is an error, and so is a
//! mandatory message returned as unroutable unless the caller says that is
//! acceptable.

use std::time::Duration;

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
/// and lost (seen in `hostile::deleting_the_dead_letter_queue…`). On a single-file channel
/// the return can only be its own. Publishes that may be unroutable (result
/// events) share one channel, concurrently.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    single_file: std::sync::Arc<[SingleFile]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    timeout: Duration,
}

struct SingleFile {
    channel: Channel,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// Single-file channels for publishes that must be routed.
const SINGLE_FILE_CHANNELS: usize = 8;

impl Publisher {
    /// Opens a confirm-mode channel whose publishes fail after `timeout`
    /// without a confirm (a blocked connection, a lost node).
    pub async fn open(conn: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut single_file = Vec::with_capacity(SINGLE_FILE_CHANNELS);
        for _ in 0..SINGLE_FILE_CHANNELS {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            single_file.push(SingleFile {
                channel,
                one_at_a_time: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Self {
            channel,
            single_file: single_file.into(),
            next: Default::default(),
            timeout,
        })
    }

    /// Publishes `mandatory` and waits for the broker's confirm. A returned
    /// message is an error unless `allow_unroutable`.
    pub async fn publish(
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
            self.single_file.get(i % self.single_file.len().max(1))
        };
        let _turn = match single {
            Some(l) => Some(l.one_at_a_time.lock().await),
            None => None,
        };
        let channel = single.map_or(&self.channel, |l| &l.channel);
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
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether every channel is still open (a missing exchange makes the
    /// broker close the channel that published to it).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
            && self
                .single_file
                .iter()
                .all(|l| l.channel.status().connected())
    }

    /// Closes every channel.
    pub async fn close(&self) {
        drop(self.channel.close(200, "OK".into()).await);
        for l in self.single_file.iter() {
            drop(l.channel.close(200, "OK".into()).await);
        }
    }
}
