//! What a dlq command writes: `list` rows, `stats` tables (text or JSON),
//! and the closing summary whose counts must add up.

use std::{collections::BTreeMap, io::Write};

use serde_json::json;
use time::OffsetDateTime;

use super::{
    Op,
    message::{DeadMessage, Why},
};
use crate::{events::timestamp, observe::logging::escape};

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Summary {
    pub queue: String,
    /// Messages in the queue when the command started (up to its marker).
    pub scanned: u32,
    pub matched: usize,
    /// Lines written (list, export).
    pub written: usize,
    /// Markers of earlier dlq commands that died, removed.
    pub stale_markers: u32,
    /// Matching messages kept because the export file does not hold them.
    pub not_exported: usize,
    /// Export-file lines that matched no message in the queue.
    pub unmatched_lines: u64,
    /// Replayed or purged (or, with `--dry-run`, would be).
    pub acted: usize,
    pub skipped_over_cap: usize,
    pub skipped_no_channel: usize,
    pub skipped_over_limit: usize,
    pub by_reason: BTreeMap<&'static str, usize>,
}

#[derive(Default)]
pub(super) struct Group {
    pub(super) count: usize,
    pub(super) oldest: Option<OffsetDateTime>,
    pub(super) newest: Option<OffsetDateTime>,
}

/// One `dlq list` row. Every field from the message is escaped: a job id or
/// an error text cannot forge a row or drive the terminal.
pub(super) fn table_row(m: &DeadMessage) -> String {
    let mut error: String = escape(&m.error).chars().take(80).collect();
    if m.error.chars().count() > 80 {
        error.push('…');
    }
    format!(
        "{:<24}  {:<17}  {:<16}  {:<32}  {:>8}  {:>7}  {}",
        m.failed_at.map(timestamp).unwrap_or_else(|| "-".into()),
        m.why.as_str(),
        escape(m.channel.as_deref().unwrap_or("-")),
        escape(m.job_id.as_deref().unwrap_or("-")),
        m.attempts,
        m.replays,
        error
    )
}

pub(super) fn write_stats(
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
    /// The closing lines on stderr: the queue's total, what matched, what was done.
    pub(crate) fn describe(&self, op: Op, max_replays: u32) -> String {
        let verb = match op {
            Op::Replay { dry_run: true, .. } => "would replay",
            Op::Replay { .. } => "replayed",
            Op::Purge { dry_run: true, .. } => "would purge",
            Op::Purge { .. } => "purged",
            Op::Export => "exported",
            Op::List { .. } => "listed",
            Op::Stats { .. } => "counted",
        };
        let mut s = format!(
            "{}: the whole queue as it stood at the start: {} message(s); matched {}; {verb} {}",
            self.queue, self.scanned, self.matched, self.acted
        );
        let skipped = self.skipped();
        if skipped > 0 {
            s.push_str(&format!(
                "; skipped {skipped} (replay cap {max_replays} reached: {}, channel not configured: {}, past --limit: {})",
                self.skipped_over_cap, self.skipped_no_channel, self.skipped_over_limit
            ));
        }
        if self.not_exported > 0 {
            s.push_str(&format!(
                "; kept {} not in the export file",
                self.not_exported
            ));
        }
        if self.stale_markers > 0 {
            s.push_str(&format!(
                "; removed {} marker(s) of earlier dlq commands that died",
                self.stale_markers
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

    fn skipped(&self) -> usize {
        self.skipped_over_cap
            .saturating_add(self.skipped_no_channel)
            .saturating_add(self.skipped_over_limit)
    }

    /// The counts must add up; a mismatch is an error, never a silent partial.
    pub(super) fn check(&self, op: Op) -> anyhow::Result<()> {
        let skipped = self.skipped();
        if self.acted.checked_add(skipped) != Some(self.matched) {
            anyhow::bail!(
                "{}: matched {} but did {} and skipped {}",
                self.queue,
                self.matched,
                self.acted,
                skipped
            );
        }
        if matches!(op, Op::List { .. } | Op::Export) && self.written != self.matched {
            anyhow::bail!(
                "{}: matched {} but wrote {}",
                self.queue,
                self.matched,
                self.written
            );
        }
        if self.unmatched_lines > 0 {
            anyhow::bail!(
                "{}: {} line(s) of the export file matched no dead letter in the queue (already purged or replayed?); \
                 only the {} that matched were purged",
                self.queue,
                self.unmatched_lines,
                self.acted
            );
        }
        Ok(())
    }
}
