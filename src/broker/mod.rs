//! RabbitMQ: connecting (to the first of several nodes that answers), the
//! topology's names and declarations ([`topology`]), publishing with confirms
//! ([`publish`]), the `x-octopods-*` headers ([`headers`]) and the broker's
//! flow control as the worker sees it ([`Flow`]).

pub mod headers;
pub(crate) mod limits;
pub mod publish;
pub(crate) mod streams;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

use crate::config::BrokerConfig;

pub use publish::{PublishError, Publisher, Routed};
pub use topology::Names;

/// How long closing a channel or connection may take: a blocked or lost
/// broker may never answer, and lapin can miss a close-ok (a `dlq purge` once
/// did its work, the broker showed its connection gone, and the command
/// never exited).
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection, waiting at most [`CLOSE_TIMEOUT`]; whatever it still
/// held the broker hands back when the connection ends.
pub async fn close(conn: &Connection, code: u16, why: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(code, why.into())).await {
        Ok(Err(e)) => tracing::info!(error = %e, "closing the broker connection failed"),
        Err(_) => tracing::warn!("the broker did not answer the connection close in time"),
        Ok(Ok(())) => {}
    }
}

/// Closes a channel, waiting at most [`CLOSE_TIMEOUT`] (false: it did not
/// close cleanly in time).
pub async fn close_channel(channel: &lapin::Channel, why: &str) -> bool {
    matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, why.into())).await,
        Ok(Ok(()))
    )
}

/// A queue's ready messages and consumers, by a passive declare (it must
/// exist: if not, the broker closes `channel`).
pub async fn inspect(channel: &lapin::Channel, queue: &str) -> Result<(u32, u32), lapin::Error> {
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok((q.message_count(), q.consumer_count()))
}

/// No node could be reached; each URL is shown without its password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the broker: {}", tried.join("; "))]
pub struct ConnectError {
    tried: Vec<String>,
}

/// A connection and the node it reached.
pub struct Connected {
    pub connection: Connection,
    /// Index of the node in [`BrokerConfig::nodes`].
    pub index: usize,
    /// The node as `host:port`, for logs and the `octopods_broker_node` metric.
    pub node: String,
}

/// Opens a connection to the first configured node that answers, named for
/// `rabbitmqctl list_connections`, e.g. `octopods-worker worker
/// prefix=octopods pid=4242 v0.1.0`.
pub async fn connect(config: &BrokerConfig, role: &str) -> Result<Connection, ConnectError> {
    connect_from(config, role, 0).await.map(|c| c.connection)
}

/// Like [`connect`], trying the nodes in turn from the one at `first`
/// (wrapping around), each within `broker.connect_timeout`.
pub async fn connect_from(
    config: &BrokerConfig,
    role: &str,
    first: usize,
) -> Result<Connected, ConnectError> {
    let name = format!(
        "octopods-worker {role} prefix={} pid={} v{}",
        config.prefix,
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    let nodes = config.nodes();
    let mut tried = Vec::with_capacity(nodes.len());
    for offset in 0..nodes.len() {
        let index = first
            .wrapping_add(offset)
            .checked_rem(nodes.len())
            .unwrap_or_default();
        let Some(url) = nodes.get(index) else {
            continue;
        };
        let props = ConnectionProperties::default().with_connection_name(name.clone().into());
        let mut uri = match url.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => uri,
            Err(e) => {
                tried.push(format!(
                    "{}: not an AMQP URL: {e}",
                    crate::config::redact_url(url)
                ));
                continue;
            }
        };
        // `broker.frame_max` (see there: it sizes lapin's buffers and must
        // not be below the producers'); a URL's own `?frame_max=` wins.
        uri.query.frame_max = uri.query.frame_max.or(Some(config.frame_max));
        let attempt =
            tokio::time::timeout(config.connect_timeout, Connection::connect_uri(uri, props));
        match attempt.await {
            Ok(Ok(connection)) => {
                return Ok(Connected {
                    connection,
                    index,
                    node: node_label(url),
                });
            }
            Ok(Err(e)) => tried.push(format!("{}: {e}", crate::config::redact_url(url))),
            Err(_) => tried.push(format!(
                "{}: no answer within {:?}",
                crate::config::redact_url(url),
                config.connect_timeout
            )),
        }
    }
    Err(ConnectError { tried })
}

/// `host:port` of an AMQP URL (default port by scheme), never the
/// credentials or the vhost.
pub fn node_label(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host: String = host.chars().filter(|c| !c.is_control()).take(200).collect();
    if host.contains(':') && !host.ends_with(']') {
        host
    } else {
        let port = if scheme == "amqps" { 5671 } else { 5672 };
        format!("{host}:{port}")
    }
}

/// The RabbitMQ a connection talks to, from its `connection.start`
/// properties (`version`, e.g. `3.10.8`, `4.0.5`). What moved between
/// versions (docs/operations.md, RabbitMQ versions) is decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// The version of the broker behind `conn`; `0.0` when it did not say.
    pub fn of(conn: &lapin::Connection) -> Self {
        let props = conn.configuration().server_properties();
        match props.inner().get("version") {
            Some(lapin::types::AMQPValue::LongString(v)) => {
                Self::parse(&String::from_utf8_lossy(v.as_bytes()))
            }
            Some(lapin::types::AMQPValue::ShortString(v)) => Self::parse(v.as_str()),
            _ => Self::default(),
        }
    }

    /// `major.minor` from a version text; what does not read is 0.
    pub fn parse(text: &str) -> Self {
        let mut parts = text
            .trim()
            .split(['.', '-', '+'])
            .map(|p| p.parse().unwrap_or(0));
        Self {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
        }
    }

    /// RabbitMQ 4.0 and later: every quorum queue has a delivery limit (20
    /// unless set) and every return counts toward it.
    pub fn counts_every_return(self) -> bool {
        self.major >= 4
    }

    /// RabbitMQ 4.3 and later: a `basic.nack` with requeue no longer counts
    /// toward the delivery limit (a reject and a lost connection still do),
    /// so a delivery can be handed back with a plain nack.
    pub fn nack_is_free(self) -> bool {
        (self.major, self.minor) >= (4, 3)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_label_is_host_and_port_only() {
        use super::node_label;
        assert_eq!(node_label("amqp://u:p@10.0.0.1:5682/%2f"), "10.0.0.1:5682");
        assert_eq!(node_label("amqp://rabbit"), "rabbit:5672");
        assert_eq!(
            node_label("amqps://u:p@rabbit/vh?heartbeat=5"),
            "rabbit:5671"
        );
        assert_eq!(node_label("amqp://u:p@a@b:1/x"), "b:1");
        assert_eq!(node_label("amqp://[::1]/"), "[::1]:5672");
        assert_eq!(node_label("amqp://[::1]:5681/"), "[::1]:5681");
        assert_eq!(node_label("nonsense"), "<invalid url>");
    }
}
