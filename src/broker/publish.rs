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

/// A confirm-mode channel for publishing. Cheap to clone; safe to share.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

impl Publisher {
    /// Opens a confirm-mode channel whose publishes fail after `timeout`
    /// without a confirm (a blocked connection, a lost node).
    pub async fn open(conn: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, timeout })
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
        let publish = async {
            self.channel
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
}
