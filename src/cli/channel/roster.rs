//! `channel add|remove|list` (docs/contract.md §16): the channels served,
//! changed at run time through the control stream. The CLI does what must
//! happen once (declare the queue, move the jobs waiting in the unroutable
//! queue, unbind on a remove); every replica follows the record.

use std::{io::Write, path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{
    broker::{self, Names, Publisher, topology},
    config::{ChannelConfig, Config, check_budget, check_channel_name, check_key_file_name},
    observe::logging::escape,
    ops::{
        control::{self, Change, Command},
        dlq::{self, Filter, Op, Source},
    },
};

/// How long `add` waits for a replica to consume the new queue.
const SERVED_WITHIN: Duration = Duration::from_secs(5);

pub(super) async fn add(
    config: &Config,
    name: &str,
    rate: f64,
    burst: Option<u32>,
    key_file: &Path,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    check_channel_name(name).map_err(anyhow::Error::msg)?;
    check_budget(rate, burst.unwrap_or(1)).map_err(anyhow::Error::msg)?;
    if config.channel(name).is_some() {
        bail!("channel {name} is configured in the file; its entry there is what counts");
    }
    let Some(dir) = &config.worker.channel_keys_dir else {
        bail!(
            "worker.channel_keys_dir is not set: the replicas read an added channel's key from \
             that directory (docs/configuration.md)"
        );
    };
    let key = key_name(dir, key_file)?;
    let channel = ChannelConfig::added(name, rate, burst, dir.join(&key));
    // Read here as every replica will read it (the key itself goes nowhere).
    channel.api_key(0).with_context(|| {
        format!(
            "every replica reads the key from {}",
            dir.join(&key).display()
        )
    })?;
    let conn = broker::connect(&config.broker, "channel").await?;
    let done = async {
        let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
        let names = Names::new(&config.broker.prefix);
        let folded = control::snapshot(&conn, &publisher, &names).await?;
        if let Some(a) = folded.added.get(name) {
            writeln!(
                out,
                "{name}: already added ({} by {}, rate {}/s); `channel set-rate` changes its rate",
                a.at, a.by, a.rate
            )?;
            return Ok(());
        }
        topology::declare_channel(&conn, config, &channel)
            .await
            .with_context(|| format!("cannot declare {}", names.channel_queue(name)))?;
        let command = Command::new(
            name,
            Change::Add {
                rate,
                burst,
                key: key.clone(),
            },
        );
        command.check().map_err(anyhow::Error::msg)?;
        control::append(&publisher, &names, &command).await?;
        writeln!(
            out,
            "{name}: added (rate {rate}/s, burst {}, key file {key}); every replica follows within 2 s",
            burst.unwrap_or(1)
        )?;
        let mut served = config.clone();
        served.channels.push(channel);
        move_unroutable(&served, name, out).await;
        let queue = names.channel_queue(name);
        let ch = conn.create_channel().await?;
        let deadline = crate::clock::after(SERVED_WITHIN);
        loop {
            if let Ok((_, consumers)) = broker::inspect(&ch, &queue).await
                && consumers > 0
            {
                writeln!(out, "{name}: consumed by a replica")?;
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                writeln!(
                    out,
                    "{name}: no replica consumes {queue} yet (is one running? its log says why)"
                )?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    }
    .await;
    broker::close(&conn, 200, "OK").await;
    done
}

/// The key file's name in `dir`: a plain name, or a path in that directory.
fn key_name(dir: &Path, key_file: &Path) -> anyhow::Result<String> {
    let file = key_file
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default()
        .to_owned();
    let parent = key_file.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        let same = match (parent.canonicalize(), dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            bail!(
                "{}: the key file must be in worker.channel_keys_dir ({}), where every replica reads it",
                key_file.display(),
                dir.display()
            );
        }
    }
    check_key_file_name(&file).map_err(anyhow::Error::msg)?;
    Ok(file)
}

/// Jobs published for the channel before it existed wait in the
/// unroutable queue: they go to its queue now.
async fn move_unroutable(served: &Config, name: &str, out: &mut impl Write) {
    let filter = Filter {
        channels: vec![name.to_owned()],
        ..Filter::default()
    };
    let request = dlq::Request {
        source: Source::Unroutable,
        filter: &filter,
        op: Op::Replay {
            limit: None,
            dry_run: false,
        },
        wait: Duration::from_secs(30),
        only_exported: None,
    };
    let moved = dlq::run(served, &request, &mut std::io::sink(), None).await;
    let written = match moved {
        Ok(s) if s.acted == 0 => Ok(()),
        Ok(s) => writeln!(
            out,
            "{name}: moved {} jobs from {} to its queue",
            s.acted, s.queue
        ),
        Err(e) => writeln!(
            out,
            "{name}: could not move its jobs from the unroutable queue ({e:#}); \
             run `octopods-worker dlq replay --from unroutable --channel {name}`"
        ),
    };
    drop(written);
}

pub(super) async fn remove(
    config: &Config,
    name: &str,
    keep_queued: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    check_channel_name(name).map_err(anyhow::Error::msg)?;
    if config.channel(name).is_some() {
        bail!(
            "channel {name} is configured in the file: remove its [[channels]] entry there and restart the replicas"
        );
    }
    let conn = broker::connect(&config.broker, "channel").await?;
    let done = async {
        let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
        let names = Names::new(&config.broker.prefix);
        let folded = control::snapshot(&conn, &publisher, &names).await?;
        if !folded.added.contains_key(name) {
            bail!("{name} is not a channel added at run time (`channel list` shows them)");
        }
        let queue = names.channel_queue(name);
        let ch = conn.create_channel().await?;
        // Unbound first: no job reaches the queue after it was counted.
        topology::route_channel(&ch, &names, name, false).await?;
        let queued = broker::inspect(&ch, &queue).await.map_or(0, |(n, _)| n);
        if queued > 0 && !keep_queued {
            topology::route_channel(&ch, &names, name, true).await?;
            bail!(
                "{queued} jobs are queued in {queue}: wait until the channel has sent them, or \
                 add --keep-queued to leave them there (sent if the channel is added again); \
                 nothing changed"
            );
        }
        control::append(&publisher, &names, &Command::new(name, Change::Remove)).await?;
        writeln!(
            out,
            "{name}: removed on every replica within 2 s; new jobs for it go to {}",
            names.unroutable()
        )?;
        if queued > 0 {
            writeln!(
                out,
                "{name}: {queued} jobs stay in {queue} (sent if the channel is added again; \
                 the queue is never deleted by the worker)"
            )?;
        }
        anyhow::Ok(())
    }
    .await;
    broker::close(&conn, 200, "OK").await;
    done
}

pub(super) async fn list(config: &Config, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let (_, folded) = control::served(config).await?;
    if !json {
        writeln!(
            out,
            "{:<24}  {:<5}  {:>8}  {:>5}  {:<24}  ADDED",
            "CHANNEL", "FROM", "RATE", "BURST", "KEY"
        )?;
    }
    let file = config.channels.iter().map(|c| {
        let key = match (&c.api_key_env, &c.api_key_file) {
            (Some(env), _) => format!("${env}"),
            (None, Some(f)) => f.display().to_string(),
            (None, None) => String::new(),
        };
        (
            c.name.as_str(),
            "file",
            c.rate_per_second,
            c.burst,
            key,
            String::new(),
        )
    });
    let added = folded
        .added
        .iter()
        .filter(|(n, _)| config.channel(n).is_none())
        .map(|(n, a)| {
            (
                n.as_str(),
                "added",
                a.rate,
                a.burst.unwrap_or(1),
                a.key.clone(),
                format!("{} by {}", a.at, a.by),
            )
        });
    for (name, from, rate, burst, key, when) in file.chain(added) {
        let o = folded.overrides.get(name);
        let (rate, burst) = match o.and_then(|o| o.rate) {
            Some((r, b)) => (r, b.unwrap_or(burst)),
            None => (rate, burst),
        };
        if json {
            writeln!(
                out,
                "{}",
                json!({"channel": name, "from": from, "rate_per_second": rate,
                       "burst": burst, "key": key, "added": when})
            )?;
        } else {
            writeln!(
                out,
                "{:<24}  {:<5}  {:>8}  {:>5}  {:<24}  {}",
                name,
                from,
                rate,
                burst,
                escape(&key),
                escape(&when)
            )?;
        }
    }
    Ok(())
}
