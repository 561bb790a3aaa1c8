//! `octopods-worker channel status|pause|resume|set-rate|clear` (docs/contract.md
//! §13) and `add|remove|list` (§16): append a command to the control
//! stream, or show every channel's state as the stream and the broker have it.

use std::io::Write;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use super::ConfigArg;

mod roster;
use crate::{
    broker::{self, Names, Publisher},
    config::Config,
    observe::logging::escape,
    ops::control::{self, Change, Command, Paused},
    ops::overview,
};

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Every channel: state, rate and burst in force, queue depth, consumers.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per channel instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// All replicas stop sending for NAME; its jobs stay queued.
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Why (shown by `channel status`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// All replicas send for NAME again.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// A new budget for NAME on all replicas, no restart.
    SetRate {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Sends per second for the whole deployment.
        rate: f64,
        /// Sends allowed at once above the rate (default: the configured burst).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Back to the configuration for NAME: not paused, the configured rate.
    Clear {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// Serve a new channel on every replica, no restart. Its queue is
    /// declared now, and jobs for it waiting in `<prefix>.unroutable` are
    /// moved to it.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Sends per second for the whole deployment.
        #[arg(long)]
        rate: f64,
        /// Sends allowed at once above the rate (default 1).
        #[arg(long)]
        burst: Option<u32>,
        /// The file holding the channel's API key, in `worker.channel_keys_dir`
        /// on every replica (a name, or a path in that directory). The key
        /// is read there, never sent through the broker.
        #[arg(long)]
        key_file: std::path::PathBuf,
    },
    /// Stop serving a channel added with `add`. Refused while its queue
    /// holds jobs, unless `--keep-queued`: they then stay in the queue
    /// (sent if the channel is added again). New jobs for it go to
    /// `<prefix>.unroutable`.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Remove it although jobs are queued; they stay in its queue.
        #[arg(long)]
        keep_queued: bool,
    },
    /// Every channel served: from the file or added, rate, burst, key file.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per channel instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: ChannelCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let (config, name, change) = match command {
        ChannelCommand::Status { config, json } => {
            let config = Config::load(&config.config)?;
            return status(&config, json, out).await;
        }
        ChannelCommand::Pause {
            config,
            name,
            reason,
        } => (config, name, Change::Pause { reason }),
        ChannelCommand::Resume { config, name } => (config, name, Change::Resume),
        ChannelCommand::SetRate {
            config,
            name,
            rate,
            burst,
        } => (config, name, Change::SetRate { rate, burst }),
        ChannelCommand::Clear { config, name } => (config, name, Change::Clear),
        ChannelCommand::Add {
            config,
            name,
            rate,
            burst,
            key_file,
        } => {
            let config = Config::load(&config.config)?;
            return roster::add(&config, &name, rate, burst, &key_file, out).await;
        }
        ChannelCommand::Remove {
            config,
            name,
            keep_queued,
        } => {
            let config = Config::load(&config.config)?;
            return roster::remove(&config, &name, keep_queued, out).await;
        }
        ChannelCommand::List { config, json } => {
            let config = Config::load(&config.config)?;
            return roster::list(&config, json, out).await;
        }
    };
    let config = Config::load(&config.config)?;
    let command = Command::new(&name, change);
    command.check().map_err(|e| anyhow::anyhow!(e))?;
    let conn = broker::connect(&config.broker, "channel").await?;
    let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
    let names = Names::new(&config.broker.prefix);
    if config.channel(&name).is_none() {
        let added = control::snapshot(&conn, &publisher, &names).await?.added;
        if !added.contains_key(&name) {
            crate::broker::close(&conn, 200, "OK").await;
            let configured: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
            let added: Vec<&str> = added.keys().map(String::as_str).collect();
            let added = if added.is_empty() {
                String::new()
            } else {
                format!("; added: {}", added.join(", "))
            };
            bail!(
                "unknown channel {:?}; configured: {}{added}",
                escape(&name),
                configured.join(", ")
            );
        }
    }
    control::append(&publisher, &names, &command).await?;
    crate::broker::close(&conn, 200, "OK").await;
    writeln!(
        out,
        "{name}: {} on every replica",
        describe(&command.change)
    )?;
    Ok(())
}

fn describe(change: &Change) -> String {
    match change {
        Change::Pause { .. } => "paused".into(),
        Change::Resume => "resumed".into(),
        Change::SetRate {
            rate,
            burst: Some(b),
        } => format!("rate {rate}/s, burst {b}"),
        Change::SetRate { rate, burst: None } => format!("rate {rate}/s"),
        Change::Clear => "back to the configuration".into(),
        Change::Add { .. } => "added".into(),
        Change::Remove => "removed".into(),
        Change::Marker { .. } => String::new(),
    }
}

async fn status(config: &Config, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let overview = overview::read(config).await?;
    if !json {
        writeln!(
            out,
            "{:<16}  {:<8}  {:>8}  {:>5}  {:<8}  {:>7}  {:>9}  SINCE / WHY",
            "CHANNEL", "STATE", "RATE", "BURST", "SOURCE", "READY", "CONSUMERS"
        )?;
    }
    for c in &overview.channels {
        let state_word = if c.paused.is_some() {
            "paused"
        } else {
            "running"
        };
        if json {
            writeln!(
                out,
                "{}",
                json!({"channel": c.name, "state": state_word,
                       "paused_since": c.paused.as_ref().map(|p| &p.since),
                       "paused_reason": c.paused.as_ref().and_then(|p| p.reason.as_ref()),
                       "paused_by": c.paused.as_ref().map(|p| &p.by),
                       "rate_per_second": c.rate, "burst": c.burst, "source": c.source,
                       "ready": c.ready, "consumers": c.consumers})
            )?;
        } else {
            let why = paused_text(c.paused.as_ref());
            let dash = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            writeln!(
                out,
                "{:<16}  {:<8}  {:>8}  {:>5}  {:<8}  {:>7}  {:>9}  {}",
                c.name,
                state_word,
                c.rate,
                c.burst,
                c.source,
                dash(c.ready),
                dash(c.consumers),
                escape(&why)
            )?;
        }
    }
    Ok(())
}

fn paused_text(paused: Option<&Paused>) -> String {
    match paused {
        None => String::new(),
        Some(p) => format!(
            "since {} by {}{}",
            p.since,
            p.by,
            p.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    }
}
