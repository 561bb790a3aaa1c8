//! What the broker and the control stream say about every channel right now:
//! state (running / paused by whom, since when, why), the rate and burst in
//! force with their source, queue depths and consumers, and the depth of each
//! delay queue. `channel status` prints it; the console shows it.

use lapin::Channel;
use time::OffsetDateTime;

use crate::{
    broker::{self, Names, Publisher, topology},
    config::Config,
    ops::control::{self, Paused},
};

/// One configured channel as it stands.
#[derive(Debug, Clone)]
pub(crate) struct ChannelView {
    pub name: String,
    pub paused: Option<Paused>,
    pub rate: f64,
    pub burst: u32,
    /// `config`, or `override` when an operator's `set-rate` is in force.
    pub source: &'static str,
    /// Jobs ready in the channel's queue (`None`: the queue is missing).
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    /// Sent messages waiting for a status check (channels with `track_status`).
    pub status_waiting: Option<u32>,
}

/// Every channel and delay queue, as of one moment.
#[derive(Debug, Clone)]
pub(crate) struct Overview {
    pub as_of: OffsetDateTime,
    pub channels: Vec<ChannelView>,
    /// Each delay queue's name and depth.
    pub delay_queues: Vec<(String, Option<u32>)>,
}

/// Reads the control stream whole and each queue's depth.
pub(crate) async fn read(config: &Config) -> anyhow::Result<Overview> {
    let names = Names::new(&config.broker.prefix);
    let conn = broker::connect(&config.broker, "overview").await?;
    let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
    let state = control::snapshot(&conn, &publisher, &names).await?;
    let served = control::with_added(config, &state.added);
    let mut ch = conn.create_channel().await?;
    let mut channels = Vec::with_capacity(served.channels.len());
    for c in &served.channels {
        let o = state.overrides.get(&c.name).cloned().unwrap_or_default();
        let (rate, burst, source) = match o.rate {
            Some((r, b)) => (r, b.unwrap_or(c.burst), "override"),
            None => (c.rate_per_second, c.burst, "config"),
        };
        let q = depth(&conn, &mut ch, &names.channel_queue(&c.name)).await;
        let status_waiting = if c.track_status {
            depth(&conn, &mut ch, &names.status_queue(&c.name))
                .await
                .map(|(n, _)| n)
        } else {
            None
        };
        channels.push(ChannelView {
            name: c.name.clone(),
            paused: o.paused,
            rate,
            burst,
            source,
            ready: q.map(|(n, _)| n),
            consumers: q.map(|(_, c)| c),
            status_waiting,
        });
    }
    let mut delay_queues = Vec::new();
    for d in topology::delay_queues(config) {
        let name = names.retry_queue(d);
        let n = depth(&conn, &mut ch, &name).await.map(|(n, _)| n);
        delay_queues.push((name, n));
    }
    crate::broker::close(&conn, 200, "OK").await;
    Ok(Overview {
        as_of: OffsetDateTime::now_utc(),
        channels,
        delay_queues,
    })
}

/// A queue's ready messages and consumers; `None` if it does not exist (the
/// broker closes the channel on a failed passive declare: a new one is opened).
async fn depth(conn: &lapin::Connection, ch: &mut Channel, queue: &str) -> Option<(u32, u32)> {
    match broker::inspect(ch, queue).await {
        Ok(found) => Some(found),
        Err(_) => {
            if let Ok(fresh) = conn.create_channel().await {
                *ch = fresh;
            }
            None
        }
    }
}
