//! Dead-letter operations (CONTRACT §6): stats, list, export, replay, purge.
//!
//! Every command works on a snapshot: it reads as many messages as the queue
//! held when it started, holding each unacked, so messages arriving meanwhile
//! are not touched. A replayed message is republished with confirms and only
//! then acked; a purged one is acked. Everything else is returned to the queue
//! unchanged when the command ends — or by RabbitMQ if the command dies, so a
//! crash may duplicate a replayed job but never loses one.

pub mod filter;
pub mod message;

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use time::OffsetDateTime;

pub use filter::Filter;
pub use message::{DeadMessage, Source, Why};

use crate::{
    broker::{self, Names, Publisher, headers},
    config::Config,
    events::timestamp,
};

/// What to do with matching messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Stats { json: bool },
    List { json: bool },
    Export,
    Replay { limit: Option<usize>, dry_run: bool },
    Purge { limit: Option<usize>, dry_run: bool },
}

/// Headers that describe a past failure; a replayed job starts clean.
const FAILURE_HEADERS: &[&str] = &[
    headers::REASON,
    headers::ERROR,
    headers::HTTP_STATUS,
    headers::ERROR_CODE,
    headers::ATTEMPTS,
    headers::CHANNEL,
    headers::FAILED_AT,
    headers::DELAY,
    headers::DELAYED,
    headers::FIRST_ATTEMPT_AT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
];

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub queue: String,
    pub snapshot: u32,
    pub scanned: u32,
    pub matched: usize,
    /// Replayed or purged (or, with `--dry-run`, would be).
    pub acted: usize,
    pub skipped_over_cap: usize,
    pub skipped_no_channel: usize,
    pub skipped_over_limit: usize,
    pub by_reason: BTreeMap<&'static str, usize>,
}

#[derive(Default)]
struct Group {
    count: usize,
    oldest: Option<OffsetDateTime>,
    newest: Option<OffsetDateTime>,
}

/// Runs `op` over the messages of `source` that match `filter`. Results go to
/// `out`; progress to stderr when `progress`.
pub async fn run(
    config: &Config,
    source: Source,
    filter: &Filter,
    op: Op,
    out: &mut impl Write,
    progress: bool,
) -> anyhow::Result<Summary> {
    let names = Names::new(&config.broker.prefix);
    let queue = match source {
        Source::Dead => names.dead(),
        Source::Unroutable => names.unroutable(),
    };
    let conn = broker::connect(&config.broker, "dlq").await?;
    let ch = conn.create_channel().await?;
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("queue {queue} does not exist (run `octopods-worker topology`)")
        })?;
    let publisher = match op {
        Op::Replay { dry_run: false, .. } => Some(Publisher::open(&conn).await?),
        _ => None,
    };
    let mut summary = Summary {
        queue: queue.clone(),
        snapshot: declared.message_count(),
        ..Summary::default()
    };
    let mut groups: BTreeMap<(Why, String), Group> = BTreeMap::new();
    if matches!(op, Op::List { json: false }) {
        writeln!(
            out,
            "{:<24}  {:<17}  {:<16}  {:<32}  {:>8}  {:>7}  ERROR",
            "FAILED_AT", "REASON", "CHANNEL", "JOB_ID", "ATTEMPTS", "REPLAYS"
        )?;
    }
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while summary.scanned < summary.snapshot {
        let Some(got) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        summary.scanned += 1;
        let delivery = got.delivery;
        let m = DeadMessage::read(&delivery, source, &names);
        if filter.matches(&m, now) {
            summary.matched += 1;
            *summary.by_reason.entry(m.why.as_str()).or_default() += 1;
            act(
                op,
                config,
                &names,
                &m,
                &delivery,
                publisher.as_ref(),
                &mut summary,
                out,
                &mut groups,
            )
            .await?;
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            eprintln!(
                "… scanned {}/{}, matched {}, acted on {} ({:.0}/s)",
                summary.scanned,
                summary.snapshot,
                summary.matched,
                summary.acted,
                f64::from(summary.scanned) / started.elapsed().as_secs_f64()
            );
        }
    }
    // Everything not acked goes back, unchanged.
    ch.basic_nack(
        0,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await?;
    if let Op::Stats { json } = op {
        write_stats(out, &queue, &groups, json)?;
    }
    drop(ch.close(200, "OK".into()).await);
    drop(conn.close(200, "OK".into()).await);
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn act(
    op: Op,
    config: &Config,
    names: &Names,
    m: &DeadMessage,
    delivery: &Delivery,
    publisher: Option<&Publisher>,
    summary: &mut Summary,
    out: &mut impl Write,
    groups: &mut BTreeMap<(Why, String), Group>,
) -> anyhow::Result<()> {
    match op {
        Op::Stats { .. } => {
            let g = groups
                .entry((m.why, m.channel.clone().unwrap_or_else(|| "?".into())))
                .or_default();
            g.count += 1;
            if let Some(at) = m.failed_at {
                g.oldest = Some(g.oldest.map_or(at, |o| o.min(at)));
                g.newest = Some(g.newest.map_or(at, |n| n.max(at)));
            }
        }
        Op::List { json: true } => {
            writeln!(out, "{}", m.summary_json())?;
            summary.acted += 1;
        }
        Op::List { json: false } => {
            writeln!(out, "{}", table_row(m))?;
            summary.acted += 1;
        }
        Op::Export => {
            writeln!(out, "{}", m.export_json(delivery))?;
            summary.acted += 1;
        }
        Op::Replay { limit, dry_run } => {
            if limit.is_some_and(|l| summary.acted >= l) {
                summary.skipped_over_limit += 1;
            } else if m.replays >= config.dlq.max_replays {
                summary.skipped_over_cap += 1;
            } else if let Some(channel) =
                m.channel.as_deref().filter(|c| config.channel(c).is_some())
            {
                if let Some(publisher) = publisher.filter(|_| !dry_run) {
                    replay(publisher, names, channel, m.replays, delivery).await?;
                }
                summary.acted += 1;
            } else {
                summary.skipped_no_channel += 1;
            }
        }
        Op::Purge { limit, dry_run } => {
            if limit.is_some_and(|l| summary.acted >= l) {
                summary.skipped_over_limit += 1;
            } else {
                if !dry_run {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                summary.acted += 1;
            }
        }
    }
    Ok(())
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
    let props = headers::with_headers(
        &delivery.properties,
        vec![(
            headers::REPLAYS,
            AMQPValue::LongLongInt(i64::from(replays) + 1),
        )],
        FAILURE_HEADERS,
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
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

fn table_row(m: &DeadMessage) -> String {
    let mut error: String = m.error.chars().take(80).collect();
    if m.error.chars().count() > 80 {
        error.push('…');
    }
    format!(
        "{:<24}  {:<17}  {:<16}  {:<32}  {:>8}  {:>7}  {}",
        m.failed_at.map(timestamp).unwrap_or_else(|| "-".into()),
        m.why.as_str(),
        m.channel.as_deref().unwrap_or("-"),
        m.job_id.as_deref().unwrap_or("-"),
        m.attempts,
        m.replays,
        error
    )
}

fn write_stats(
    out: &mut impl Write,
    queue: &str,
    groups: &BTreeMap<(Why, String), Group>,
    json: bool,
) -> std::io::Result<()> {
    let total: usize = groups.values().map(|g| g.count).sum();
    let oldest = groups.values().filter_map(|g| g.oldest).min();
    let newest = groups.values().filter_map(|g| g.newest).max();
    let ts = |t: Option<OffsetDateTime>| t.map(timestamp);
    if json {
        let rows: Vec<_> = groups
            .iter()
            .map(|((why, ch), g)| json!({"reason": why.as_str(), "channel": ch, "count": g.count, "oldest": ts(g.oldest), "newest": ts(g.newest)}))
            .collect();
        return writeln!(
            out,
            "{}",
            json!({"queue": queue, "total": total, "oldest": ts(oldest), "newest": ts(newest), "groups": rows})
        );
    }
    writeln!(out, "{queue}: {total} message(s)")?;
    if total == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "{:<17}  {:<16}  {:>7}  {:<24}  NEWEST",
        "REASON", "CHANNEL", "COUNT", "OLDEST"
    )?;
    for ((why, ch), g) in groups {
        writeln!(
            out,
            "{:<17}  {:<16}  {:>7}  {:<24}  {}",
            why.as_str(),
            ch,
            g.count,
            ts(g.oldest).unwrap_or_else(|| "-".into()),
            ts(g.newest).unwrap_or_else(|| "-".into())
        )?;
    }
    writeln!(
        out,
        "oldest failure {}, newest {}",
        ts(oldest).unwrap_or_else(|| "-".into()),
        ts(newest).unwrap_or_else(|| "-".into())
    )
}

impl Summary {
    /// The closing lines on stderr.
    pub fn describe(&self, op: Op, max_replays: u32) -> String {
        let verb = match op {
            Op::Replay { dry_run: true, .. } => "would replay",
            Op::Replay { .. } => "replayed",
            Op::Purge { dry_run: true, .. } => "would purge",
            Op::Purge { .. } => "purged",
            _ => "listed",
        };
        let mut s = format!(
            "{}: scanned {} of {} (snapshot at start); matched {}; {verb} {}",
            self.queue, self.scanned, self.snapshot, self.matched, self.acted
        );
        let skipped = self.skipped_over_cap + self.skipped_no_channel + self.skipped_over_limit;
        if skipped > 0 {
            s.push_str(&format!(
                "; skipped {skipped} (replay cap {max_replays} reached: {}, channel not configured: {}, past --limit: {})",
                self.skipped_over_cap, self.skipped_no_channel, self.skipped_over_limit
            ));
        }
        if !self.by_reason.is_empty() {
            let parts: Vec<String> = self
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            s.push_str(&format!("\nmatched by reason: {}", parts.join(", ")));
        }
        s
    }
}
