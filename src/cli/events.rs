//! `octopods-worker events`: takes result events off `<prefix>.results` and
//! prints them as JSON lines, for demos and quick checks. It consumes (acks)
//! what it prints; production consumers bind their own queues.

use std::{io::Write, time::Duration};

use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};

use crate::{
    broker::{self, Names},
    config::Config,
};

/// Prints events until `count` were printed or `timeout` passed without one.
/// Returns how many were printed.
pub async fn tail(
    config: &Config,
    count: Option<usize>,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let conn = broker::connect(&config.broker, "events").await?;
    let ch = conn.create_channel().await?;
    // Deliveries not yet printed when we stop go back to the queue on close.
    ch.basic_qos(16, BasicQosOptions::default()).await?;
    let queue = Names::new(&config.broker.prefix).results();
    let mut events = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut printed = 0;
    while count.is_none_or(|c| printed < c) {
        let Ok(next) = tokio::time::timeout(timeout, events.next()).await else {
            break; // quiet for `timeout`
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        out.write_all(&delivery.data)?;
        out.write_all(b"\n")?;
        out.flush()?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        printed = printed.saturating_add(1);
    }
    crate::broker::close(&conn, 200, "OK").await;
    Ok(printed)
}
