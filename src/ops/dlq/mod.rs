//! Dead-letter operations (docs/contract.md §6): stats, list, export, replay, purge.
//!
//! Every command works on an exact [`snapshot`]: the whole queue as it stood
//! when the command started, each message seen once, whatever ran before and
//! whoever else is at work (one command at a time per queue). A replayed
//! message is republished with confirms and only then acked; a purged one is
//! acked. Everything else goes back to the queue unchanged when the command
//! ends — or by RabbitMQ if the command dies, so a crash may duplicate a
//! replayed job but never loses one. `purge --only-exported FILE` deletes
//! exactly the dead letters a `dlq export` file holds ([`backup`]).

pub(crate) mod backup;
pub(crate) mod filter;
pub(crate) mod message;
pub(crate) mod report;
pub(crate) mod snapshot;

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context;
use lapin::{message::Delivery, options::BasicAckOptions, types::AMQPValue};
use time::OffsetDateTime;

pub(crate) use filter::Filter;
pub(crate) use message::{DeadMessage, Source, Why};
pub(crate) use report::Summary;

use crate::{
    broker::{Names, Publisher, headers},
    config::Config,
};
use backup::Exported;
use report::{Group, table_row, write_stats};
use snapshot::Snapshot;
use snapshot::acked;

/// What to do with matching messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Stats { json: bool },
    List { json: bool },
    Export,
    Replay { limit: Option<usize>, dry_run: bool },
    Purge { limit: Option<usize>, dry_run: bool },
}

/// One dlq command.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub source: Source,
    pub filter: &'a Filter,
    pub op: Op,
    /// How long to wait for another dlq command on the same queue.
    pub wait: Duration,
    /// Purge only the dead letters this export file holds.
    pub only_exported: Option<&'a std::path::Path>,
}

/// Told the counts so far, about once a second, and how long the command has run.
pub(crate) type Progress<'a> = &'a (dyn Fn(&Summary, Duration) + Send + Sync);

/// Runs the request over the whole queue. Results go to `out`; the counts so
/// far to `progress`. An error after some work says what was done.
pub(crate) async fn run(
    config: &Config,
    req: &Request<'_>,
    out: &mut (impl Write + Send),
    progress: Option<Progress<'_>>,
) -> anyhow::Result<Summary> {
    let names = Names::new(&config.broker.prefix);
    let queue = req.source.queue(&names);
    let exported = match req.only_exported {
        Some(path) => Some(Exported::load(path)?),
        None => None,
    };
    let mut snap = Snapshot::open(config, &queue, req.wait).await?;
    let mut pass = Pass {
        config,
        req,
        names,
        exported,
        summary: Summary {
            queue: queue.clone(),
            ..Summary::default()
        },
        groups: BTreeMap::new(),
    };
    let scanned = pass.scan(&mut snap, out, progress).await;
    let Pass {
        mut summary,
        groups,
        exported,
        ..
    } = pass;
    summary.stale_markers = snap.stale_markers;
    // Whatever happened, hand back everything still held.
    let acked = match req.op {
        Op::Replay { dry_run: false, .. } | Op::Purge { dry_run: false, .. } => {
            u64::try_from(summary.acted).unwrap_or(u64::MAX)
        }
        _ => 0,
    };
    snap.close(acked).await;
    if let Err(e) = scanned {
        return Err(e.context(format!(
            "stopped early; {}",
            summary.describe(req.op, config.dlq.max_replays)
        )));
    }
    if let Op::Stats { json } = req.op {
        write_stats(out, &queue, &groups, json)?;
    }
    out.flush()?;
    if let Some(e) = &exported {
        summary.unmatched_lines = e.unmatched();
    }
    summary.check(req.op)?;
    Ok(summary)
}

/// Reads a whole snapshot of `source` and changes nothing: each message goes
/// to `look` in queue order until it answers `false`; everything goes back
/// when the snapshot closes. Returns how many were looked at.
pub(crate) async fn visit(
    config: &Config,
    source: Source,
    wait: Duration,
    mut look: impl FnMut(&Delivery, DeadMessage) -> bool + Send,
) -> anyhow::Result<u32> {
    let names = Names::new(&config.broker.prefix);
    let mut snap = Snapshot::open(config, &source.queue(&names), wait).await?;
    let mut seen = 0_u32;
    let read = async {
        while let Some(delivery) = snap.next().await? {
            seen = seen.saturating_add(1);
            if !look(&delivery, DeadMessage::read(&delivery, source, &names)) {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    snap.close(0).await;
    read.map(|()| seen)
}

/// One pass over a snapshot: what the command is, and what it has counted.
struct Pass<'a> {
    config: &'a Config,
    req: &'a Request<'a>,
    names: Names,
    exported: Option<Exported>,
    summary: Summary,
    groups: BTreeMap<(Why, String), Group>,
}

impl Pass<'_> {
    async fn scan(
        &mut self,
        snap: &mut Snapshot,
        out: &mut (impl Write + Send),
        progress: Option<Progress<'_>>,
    ) -> anyhow::Result<()> {
        if matches!(self.req.op, Op::List { json: false }) {
            writeln!(
                out,
                "{:<24}  {:<17}  {:<16}  {:<32}  {:>8}  {:>7}  ERROR",
                "FAILED_AT", "REASON", "CHANNEL", "JOB_ID", "ATTEMPTS", "REPLAYS"
            )?;
        }
        let now = OffsetDateTime::now_utc();
        let started = Instant::now();
        let mut last_progress = Instant::now();
        while let Some(delivery) = snap.next().await? {
            self.summary.scanned = self.summary.scanned.saturating_add(1);
            let m = DeadMessage::read(&delivery, self.req.source, &self.names);
            if self.req.filter.matches(&m, now) {
                let keep = match self.exported.as_mut() {
                    Some(e) => !e.take(&m.export_json(&delivery)),
                    None => false,
                };
                if keep {
                    self.summary.not_exported = self.summary.not_exported.saturating_add(1);
                } else {
                    self.summary.matched = self.summary.matched.saturating_add(1);
                    let n = self.summary.by_reason.entry(m.why.as_str()).or_default();
                    *n = n.saturating_add(1);
                    self.act(&m, &delivery, snap.publisher(), out).await?;
                }
            }
            if let Some(tell) = progress
                && last_progress.elapsed() >= Duration::from_secs(1)
            {
                last_progress = Instant::now();
                tell(&self.summary, started.elapsed());
            }
        }
        Ok(())
    }

    async fn act(
        &mut self,
        m: &DeadMessage,
        delivery: &Delivery,
        publisher: &Publisher,
        out: &mut (impl Write + Send),
    ) -> anyhow::Result<()> {
        let summary = &mut self.summary;
        match self.req.op {
            Op::Stats { .. } => {
                let g = self
                    .groups
                    .entry((m.why, m.channel.clone().unwrap_or_else(|| "?".into())))
                    .or_default();
                g.count = g.count.saturating_add(1);
                if let Some(at) = m.failed_at {
                    g.oldest = Some(g.oldest.map_or(at, |o| o.min(at)));
                    g.newest = Some(g.newest.map_or(at, |n| n.max(at)));
                }
                summary.acted = summary.acted.saturating_add(1);
            }
            Op::List { json } => {
                if json {
                    writeln!(out, "{}", m.summary_json())?;
                } else {
                    writeln!(out, "{}", table_row(m))?;
                }
                summary.written = summary.written.saturating_add(1);
                summary.acted = summary.acted.saturating_add(1);
            }
            Op::Export => {
                writeln!(out, "{}", m.export_json(delivery))?;
                summary.written = summary.written.saturating_add(1);
                summary.acted = summary.acted.saturating_add(1);
            }
            Op::Replay { limit, dry_run } => {
                let channel = m
                    .channel
                    .as_deref()
                    .filter(|c| self.config.channel(c).is_some());
                if limit.is_some_and(|l| summary.acted >= l) {
                    summary.skipped_over_limit = summary.skipped_over_limit.saturating_add(1);
                } else if m.replays >= self.config.dlq.max_replays {
                    summary.skipped_over_cap = summary.skipped_over_cap.saturating_add(1);
                } else if let Some(channel) = channel {
                    if !dry_run {
                        replay(publisher, &self.names, channel, m.replays, delivery).await?;
                    }
                    summary.acted = summary.acted.saturating_add(1);
                } else {
                    summary.skipped_no_channel = summary.skipped_no_channel.saturating_add(1);
                }
            }
            Op::Purge { limit, dry_run } => {
                if limit.is_some_and(|l| summary.acted >= l) {
                    summary.skipped_over_limit = summary.skipped_over_limit.saturating_add(1);
                } else {
                    if !dry_run {
                        acked(delivery.acker.ack(BasicAckOptions::default()).await?)?;
                    }
                    summary.acted = summary.acted.saturating_add(1);
                }
            }
        }
        Ok(())
    }
}

/// Republishes the job to its channel with a clean failure record and one
/// more replay counted, waits for the confirm, then acks the dead copy.
async fn replay(
    publisher: &Publisher,
    names: &Names,
    channel: &str,
    replays: u32,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    // A clean failure record: every `x-octopods-*` and death header goes,
    // the replay count comes back one higher.
    let props = headers::durable_copy(
        &delivery.properties,
        vec![(
            headers::REPLAYS,
            AMQPValue::LongLongInt(i64::from(replays.saturating_add(1))),
        )],
    );
    publisher
        .publish(
            &names.jobs_exchange(),
            channel,
            &delivery.data,
            props,
            false,
        )
        .await
        .with_context(|| format!("replay to channel {channel} failed; the dead copy was kept"))?;
    acked(delivery.acker.ack(BasicAckOptions::default()).await?)?;
    Ok(())
}
