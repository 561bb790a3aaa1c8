//! Publishing with publisher confirms. A publish counts only when the broker
//! acked it; a nack is an error, and so is a mandatory message returned as
//! unroutable unless the caller says that is acceptable.

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
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
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
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await?
            .await?;
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
