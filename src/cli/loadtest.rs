//! `octopods-worker loadtest`: publishes N jobs over the configured channels
//! to a running worker (pointed at a sandbox), reads their result events, and
//! reports throughput, end-to-end latency percentiles, and each channel's
//! achieved send rate against its budget.
//!
//! Jobs carry `metadata.loadtest` (the run id) and the publish time; only
//! this run's events are counted, but every event read from the results queue
//! is consumed — run it against a test deployment.

#![allow(clippy::arithmetic_side_effects)] // a load generator's own counters and clocks, not input
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    broker::{self, Names},
    config::Config,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub jobs: usize,
    /// Channels to spread jobs over (round robin); empty means all configured.
    pub channels: Vec<String>,
    /// Give up waiting for events after this long without one.
    pub idle_timeout: Duration,
}

/// One channel's share of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelReport {
    pub channel: String,
    pub sent: usize,
    /// Sends per second between the channel's first and last `sent_at`.
    pub achieved_rate: f64,
    pub budget: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub published: usize,
    pub sent: usize,
    pub dead_lettered: usize,
    pub missing: usize,
    pub elapsed: Duration,
    pub jobs_per_second: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub channels: Vec<ChannelReport>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or_default()
}

fn job(run: &str, i: usize, channel: &str) -> Value {
    json!({
        "job_id": format!("loadtest-{run}-{i}"),
        "destination_phone": format!("+1555{:07}", i % 10_000_000),
        "waba_interactive_message": crate::job::delivery_confirmation(),
        "channel": channel,
        "metadata": {"loadtest": run, "published_at_us": OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000}
    })
}

/// Runs a load test. Progress goes to stderr every few seconds.
pub async fn run(config: &Config, opts: &Options) -> anyhow::Result<Report> {
    let channels = chosen_channels(config, opts)?;
    let names = Names::new(&config.broker.prefix);
    let conn = broker::connect(&config.broker, "loadtest").await?;
    let run_id = ulid::Ulid::generate().to_string().to_lowercase();
    // Listen first, so no event is missed.
    let (_events_ch, mut events) = listen(&conn, &names).await?;
    let started = Instant::now();
    publish(&conn, &names, &run_id, &channels, opts.jobs).await?;
    eprintln!("published {} jobs in {:.1?}", opts.jobs, started.elapsed());
    let mut tally = Tally::default();
    tally.collect(&mut events, &run_id, opts).await?;
    let elapsed = started.elapsed();
    crate::broker::close(&conn, 200, "OK").await;
    Ok(tally.report(config, &channels, opts.jobs, elapsed))
}

/// The channels the jobs go to: those asked for (each configured), else all.
fn chosen_channels(config: &Config, opts: &Options) -> anyhow::Result<Vec<String>> {
    let channels: Vec<String> = if opts.channels.is_empty() {
        config.channels.iter().map(|c| c.name.clone()).collect()
    } else {
        opts.channels.clone()
    };
    for c in &channels {
        anyhow::ensure!(
            config.channel(c).is_some(),
            "channel {c:?} is not configured"
        );
    }
    anyhow::ensure!(!channels.is_empty() && opts.jobs > 0, "nothing to do");
    Ok(channels)
}

/// A consumer of the results queue (and the channel it lives on).
async fn listen(
    conn: &lapin::Connection,
    names: &Names,
) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let events = ch
        .basic_consume(
            names.results().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot consume {} (is the topology declared?)",
                names.results()
            )
        })?;
    Ok((ch, events))
}

/// Publishes `jobs` jobs round-robin over `channels`, confirmed 500 at a time.
async fn publish(
    conn: &lapin::Connection,
    names: &Names,
    run_id: &str,
    channels: &[String],
    jobs: usize,
) -> anyhow::Result<()> {
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut pending = Vec::with_capacity(500);
    for i in 0..jobs {
        let Some(channel) = channels.get(i % channels.len().max(1)) else {
            break;
        };
        let body = serde_json::to_vec(&job(run_id, i, channel))?;
        let exchange = names.jobs_exchange();
        let options = BasicPublishOptions::default();
        let confirm = publisher
            .basic_publish(
                exchange.as_str().into(),
                channel.as_str().into(),
                options,
                &body,
                props.clone(),
            )
            .await?;
        pending.push(confirm);
        if pending.len() == 500 || i + 1 == jobs {
            for confirm in pending.drain(..) {
                anyhow::ensure!(confirm.await?.is_ack(), "the broker refused a job");
            }
        }
    }
    Ok(())
}

/// What came back of this run's jobs.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    sent_at: BTreeMap<String, Vec<OffsetDateTime>>,
    sent: usize,
    dead: usize,
}

impl Tally {
    fn settled(&self) -> usize {
        self.sent.saturating_add(self.dead)
    }

    /// Reads events until every job settled or none came for `idle_timeout`.
    async fn collect(
        &mut self,
        events: &mut lapin::Consumer,
        run_id: &str,
        opts: &Options,
    ) -> anyhow::Result<()> {
        let mut last_progress = Instant::now();
        while self.settled() < opts.jobs {
            let next = tokio::time::timeout(opts.idle_timeout, events.next()).await;
            let Ok(Some(delivery)) = next else { break };
            let delivery = delivery?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            if let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) {
                self.count(&event, run_id);
            }
            if last_progress.elapsed() >= Duration::from_secs(3) {
                last_progress = Instant::now();
                eprintln!("… {} of {} settled", self.settled(), opts.jobs);
            }
        }
        Ok(())
    }

    /// Counts one event, if it is one of this run's.
    fn count(&mut self, event: &Value, run_id: &str) {
        if event.pointer("/metadata/loadtest").and_then(Value::as_str) != Some(run_id) {
            return;
        }
        let now_us = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        if let Some(t) = event
            .pointer("/metadata/published_at_us")
            .and_then(Value::as_i64)
        {
            let us = u64::try_from(now_us - i128::from(t)).unwrap_or(0);
            self.latencies.push(Duration::from_micros(us));
        }
        if event.get("event").and_then(Value::as_str) != Some("sent") {
            self.dead = self.dead.saturating_add(1);
            return;
        }
        self.sent = self.sent.saturating_add(1);
        let channel = event
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(t) = event
            .get("sent_at")
            .and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        {
            self.sent_at.entry(channel).or_default().push(t);
        }
    }

    fn report(
        mut self,
        config: &Config,
        channels: &[String],
        published: usize,
        elapsed: Duration,
    ) -> Report {
        self.latencies.sort();
        let channels = channels
            .iter()
            .map(|c| {
                let mut times = self.sent_at.remove(c).unwrap_or_default();
                times.sort();
                let span = match (times.first(), times.last()) {
                    (Some(a), Some(b)) if times.len() > 1 => (*b - *a).as_seconds_f64(),
                    _ => 0.0,
                };
                ChannelReport {
                    channel: c.clone(),
                    sent: times.len(),
                    achieved_rate: if span > 0.0 {
                        (times.len() - 1) as f64 / span
                    } else {
                        0.0
                    },
                    budget: config.channel(c).map_or(0.0, |c| c.rate_per_second),
                }
            })
            .collect();
        Report {
            published,
            sent: self.sent,
            dead_lettered: self.dead,
            missing: published.saturating_sub(self.settled()),
            elapsed,
            jobs_per_second: self.settled() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&self.latencies, 50.0),
            p95: percentile(&self.latencies, 95.0),
            p99: percentile(&self.latencies, 99.0),
            channels,
        }
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "jobs: {} published, {} sent, {} dead-lettered, {} missing",
            self.published, self.sent, self.dead_lettered, self.missing
        );
        let _ = writeln!(
            s,
            "elapsed: {:.2?}, throughput: {:.1} jobs/s",
            self.elapsed, self.jobs_per_second
        );
        let _ = writeln!(
            s,
            "end-to-end latency (publish to event): p50 {:.1?}, p95 {:.1?}, p99 {:.1?}",
            self.p50, self.p95, self.p99
        );
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>12} {:>10} {:>8}",
            "CHANNEL", "SENT", "ACHIEVED/s", "BUDGET/s", "RATIO"
        );
        for c in &self.channels {
            let ratio = if c.budget > 0.0 {
                c.achieved_rate / c.budget
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>12.2} {:>10.2} {:>7.1}%",
                c.channel,
                c.sent,
                c.achieved_rate,
                c.budget,
                ratio * 100.0
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
