//! `octopods-worker events`: takes result events off `<prefix>.results` and
//! prints them as JSON lines, for demos and quick checks. It consumes (acks)
//! what it prints; production consumers bind their own queues.

use std::{io::Write, time::Duration};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use tokio::time::Instant;

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
    let queue = Names::new(&config.broker.prefix).results();
    let mut printed = 0;
    let mut last = Instant::now();
    while count.is_none_or(|c| printed < c) {
        match ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            Some(msg) => {
                out.write_all(&msg.delivery.data)?;
                out.write_all(b"\n")?;
                out.flush()?;
                msg.delivery.acker.ack(BasicAckOptions::default()).await?;
                printed += 1;
                last = Instant::now();
            }
            None if last.elapsed() >= timeout => break,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    drop(conn.close(200, "OK".into()).await);
    Ok(printed)
}
