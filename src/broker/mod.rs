//! RabbitMQ: connecting (to the first of several nodes that answers), the
//! topology's names and declarations ([`topology`]), publishing with confirms
//! ([`publish`]), the `x-octopods-*` headers ([`headers`]) and the broker's
//! flow control as the worker sees it ([`Flow`]).

pub mod headers;
pub mod publish;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

use crate::config::BrokerConfig;

pub use publish::{PublishError, Publisher, Routed};
pub use topology::Names;

/// The broker could not be reached; the URL is shown without its password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {url}: {source}")]
pub struct ConnectError {
    url: String,
    #[source]
    source: lapin::Error,
}

/// Opens a connection to the configured broker, named for `rabbitmqctl
/// list_connections`, e.g. `octopods-worker worker prefix=octopods pid=4242 v0.1.0`.
pub async fn connect(config: &BrokerConfig, role: &str) -> Result<Connection, ConnectError> {
    let name = format!(
        "octopods-worker {role} prefix={} pid={} v{}",
        config.prefix,
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&config.url, props)
        .await
        .map_err(|source| ConnectError {
            url: redact_url(&config.url),
            source,
        })
}

/// Whether the worker can publish results: not while RabbitMQ blocks the
/// publishing connection (`connection.blocked`: a memory or disk alarm), nor
/// while the last `sent` result could not be published. While blocked the
/// worker makes no request to Octopods: it could not report what it sent.
#[derive(Debug)]
pub(crate) struct Flow {
    state: tokio::sync::watch::Sender<bool>,
    broker: std::sync::atomic::AtomicBool,
    settle: std::sync::atomic::AtomicBool,
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            state: tokio::sync::watch::Sender::new(false),
            broker: false.into(),
            settle: false.into(),
        }
    }
}

impl Flow {
    /// The broker blocked or unblocked the publishing connection.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.broker
            .store(blocked, std::sync::atomic::Ordering::SeqCst);
        self.update();
    }

    /// A `sent` result could not be published (or, `false`, a settlement
    /// was published again).
    pub(crate) fn set_settle_failing(&self, failing: bool) {
        self.settle
            .store(failing, std::sync::atomic::Ordering::SeqCst);
        self.update();
    }

    fn update(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let blocked = self.broker.load(SeqCst) || self.settle.load(SeqCst);
        self.state
            .send_if_modified(|b| std::mem::replace(b, blocked) != blocked);
    }

    /// Returns once publishing is not blocked.
    pub(crate) async fn until_open(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        drop(rx.wait_for(|blocked| !blocked).await);
    }
}

/// The broker URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_is_redacted() {
        assert_eq!(
            super::redact_url("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact_url("amqp://host/"), "amqp://host/");
    }
}
