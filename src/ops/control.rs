//! Runtime control of channels (docs/contract.md §13): pause, resume, a new rate —
//! on every replica, through RabbitMQ alone.
//!
//! Every command is a record appended to the stream `<prefix>.control` (a
//! RabbitMQ stream: an ordered, replicated, durable log that every reader
//! reads whole). Each replica reads it from its first record at start and
//! follows it live, folding the records in log order into each channel's
//! [`Override`]. So a change reaches every running replica as soon as it is
//! appended (well within 2 s), a replica started later folds the same log to
//! the same state, and no command is lost (publisher confirms on a replicated
//! log) or reordered (one log, read in order by all). A command is undone by
//! the opposite one (`resume`, another `set-rate`) or by `clear`.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, Connection, options::BasicAckOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    broker::{
        Names, Publisher,
        streams::{self, Offset},
    },
    events::timestamp,
};

/// One command, as appended to the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Command {
    pub channel: String,
    #[serde(flatten)]
    pub change: Change,
    /// When it was given.
    pub at: String,
    /// Who gave it (host and user), for `channel status`.
    #[serde(default)]
    pub by: String,
}

/// What a command changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Change {
    Pause {
        #[serde(default)]
        reason: Option<String>,
    },
    Resume,
    SetRate {
        rate: f64,
        #[serde(default)]
        burst: Option<u32>,
    },
    /// Back to the configuration: not paused, the configured rate.
    Clear,
    /// A channel served from now on (docs/contract.md §16), its API key in
    /// the file `key` of `worker.channel_keys_dir` on every replica.
    Add {
        rate: f64,
        #[serde(default)]
        burst: Option<u32>,
        key: String,
    },
    /// A channel added at run time no longer served; its queue and
    /// whatever it holds stay.
    Remove,
    /// Ends a reader's catch-up (`channel status`); changes nothing.
    Marker {
        id: String,
    },
}

/// A channel's state as the commands left it (the configuration applies
/// where nothing is overridden).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Override {
    /// Paused since, and why.
    pub paused: Option<Paused>,
    /// Rate and burst in force instead of the configured ones.
    pub rate: Option<(f64, Option<u32>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Paused {
    pub since: String,
    pub reason: Option<String>,
    pub by: String,
}

/// A channel added at run time, as the stream has it now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Added {
    pub rate: f64,
    pub burst: Option<u32>,
    /// The key file's name in `worker.channel_keys_dir`.
    pub key: String,
    pub at: String,
    pub by: String,
}

/// Folds `command` into the channels added at run time: an `add` of a
/// channel not there yet adds it (a second `add` changes nothing: a new
/// rate is `set-rate`'s), a `remove` forgets it. Checked first.
pub(crate) fn fold_added(
    added: &mut std::collections::BTreeMap<String, Added>,
    command: &Command,
) -> Result<(), String> {
    command.check()?;
    match &command.change {
        Change::Add { rate, burst, key } => {
            added
                .entry(command.channel.clone())
                .or_insert_with(|| Added {
                    rate: *rate,
                    burst: *burst,
                    key: key.clone(),
                    at: command.at.clone(),
                    by: command.by.clone(),
                });
        }
        Change::Remove => {
            added.remove(&command.channel);
        }
        _ => {}
    }
    Ok(())
}

/// `config` with the channels added at run time after its own (a name the
/// file has stays the file's): every channel a replica serves now.
pub(crate) fn with_added(
    config: &crate::config::Config,
    added: &std::collections::BTreeMap<String, Added>,
) -> crate::config::Config {
    let mut all = config.clone();
    let dir = config.worker.channel_keys_dir.clone().unwrap_or_default();
    for (name, a) in added {
        if config.channel(name).is_none() {
            all.channels.push(crate::config::ChannelConfig::added(
                name,
                a.rate,
                a.burst,
                dir.join(&a.key),
            ));
        }
    }
    all
}

/// `config` with the channels added at run time, as the stream has them
/// now (one connection, closed after), and the stream folded.
pub(crate) async fn served(
    config: &crate::config::Config,
) -> anyhow::Result<(crate::config::Config, Folded)> {
    let conn = crate::broker::connect(&config.broker, "control").await?;
    let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
    let folded = snapshot(&conn, &publisher, &Names::new(&config.broker.prefix)).await;
    crate::broker::close(&conn, 200, "OK").await;
    let folded = folded?;
    Ok((with_added(config, &folded.added), folded))
}

/// The longest text a record may carry in any field (a reason, who, when).
pub(crate) const MAX_TEXT: usize = 1000;
/// The largest record a replica reads; a longer one is skipped unread.
const MAX_RECORD: usize = 16 * 1024;

impl Override {
    /// Applies one command, checked first: a record that does not pass
    /// [`Command::check`] changes nothing and says why. A repeated command
    /// changes nothing (a second pause keeps the first one's time).
    pub(crate) fn apply(&mut self, command: &Command) -> Result<(), String> {
        command.check()?;
        match &command.change {
            Change::Pause { reason } => {
                if self.paused.is_none() {
                    self.paused = Some(Paused {
                        since: command.at.clone(),
                        reason: reason.clone(),
                        by: command.by.clone(),
                    });
                }
            }
            Change::Resume => self.paused = None,
            Change::SetRate { rate, burst } => self.rate = Some((*rate, *burst)),
            Change::Clear => *self = Override::default(),
            // The roster's business ([`Added`]), not the override's.
            Change::Add { .. } | Change::Remove | Change::Marker { .. } => {}
        }
        Ok(())
    }
}

impl Command {
    pub(crate) fn new(channel: &str, change: Change) -> Self {
        let user = std::env::var("USER").unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        Self {
            channel: channel.to_owned(),
            change,
            at: timestamp(OffsetDateTime::now_utc()),
            by: format!("{user}@{host}"),
        }
    }

    /// Checks what a command may carry (a record from the stream is input).
    /// Every replica checks a record here before it folds it, whoever
    /// wrote it; the `channel` command refuses the same values up front.
    pub(crate) fn check(&self) -> Result<(), String> {
        let reason = match &self.change {
            Change::Pause { reason } => reason.as_deref(),
            _ => None,
        };
        for (field, text) in [
            ("channel", Some(self.channel.as_str())),
            ("at", Some(self.at.as_str())),
            ("by", Some(self.by.as_str())),
            ("reason", reason),
        ] {
            let len = text.map_or(0, str::len);
            if len > MAX_TEXT {
                return Err(format!("{field}: {len} bytes, at most {MAX_TEXT}"));
            }
        }
        match &self.change {
            Change::SetRate { rate, burst } => {
                crate::config::check_budget(*rate, burst.unwrap_or(1))?;
            }
            Change::Add { rate, burst, key } => {
                crate::config::check_channel_name(&self.channel)?;
                crate::config::check_budget(*rate, burst.unwrap_or(1))?;
                crate::config::check_key_file_name(key)?;
            }
            Change::Remove => crate::config::check_channel_name(&self.channel)?,
            _ => {}
        }
        Ok(())
    }
}

/// Appends a command to the stream, with a publisher confirm.
pub(crate) async fn append(
    publisher: &Publisher,
    names: &Names,
    command: &Command,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(command)?;
    publisher
        .publish(
            "",
            &names.control(),
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
            false,
        )
        .await
        .with_context(|| format!("cannot append to {}", names.control()))?;
    Ok(())
}

/// Subscribes to the stream from its first record.
pub(crate) async fn subscribe(
    conn: &Connection,
    names: &Names,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    // A stream consumer needs a prefetch; records are tiny.
    let (ch, consumer) = streams::consume(conn, &names.control(), Offset::First, 200)
        .await
        .with_context(|| {
            format!(
                "cannot read {} (run `octopods-worker topology`)",
                names.control()
            )
        })?;
    Ok((ch, consumer))
}

/// Reads one record: the command, or why it is ignored. Acks it (a stream
/// keeps it; the ack only gives credit for the next).
pub(crate) async fn read(delivery: lapin::message::Delivery) -> Result<Command, String> {
    drop(delivery.acker.ack(BasicAckOptions::default()).await);
    if delivery.data.len() > MAX_RECORD {
        return Err(format!(
            "a record of {} bytes (at most {MAX_RECORD})",
            delivery.data.len()
        ));
    }
    let command: Command = serde_json::from_slice(&delivery.data)
        .map_err(|e| format!("not a control command: {e}"))?;
    // Its values are checked where it is applied (`Override::apply`).
    Ok(command)
}

/// The stream folded: every channel's override and the channels added at
/// run time.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub overrides: std::collections::BTreeMap<String, Override>,
    pub added: std::collections::BTreeMap<String, Added>,
}

/// Reads the whole stream as it stands (up to a marker this call appends)
/// and folds it.
pub(crate) async fn snapshot(
    conn: &Connection,
    publisher: &Publisher,
    names: &Names,
) -> anyhow::Result<Folded> {
    let (ch, mut consumer) = subscribe(conn, names).await?;
    let id = ulid::Ulid::generate().to_string();
    append(
        publisher,
        names,
        &Command::new("", Change::Marker { id: id.clone() }),
    )
    .await?;
    let mut state = Folded::default();
    loop {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await else {
            bail!(
                "{} did not give back the marker within 10 s",
                names.control()
            );
        };
        let Some(delivery) = next else {
            bail!("the broker ended the read of {}", names.control());
        };
        let Ok(command) = read(delivery?).await else {
            continue;
        };
        if command.change == (Change::Marker { id: id.clone() }) {
            break;
        }
        // One that cannot be applied changes nothing (checked in `apply`).
        drop(fold_added(&mut state.added, &command));
        if command.change == Change::Remove {
            // A channel removed starts again from nothing if added again.
            state.overrides.remove(&command.channel);
            continue;
        }
        drop(
            state
                .overrides
                .entry(command.channel.clone())
                .or_default()
                .apply(&command),
        );
    }
    crate::broker::close_channel(&ch, "OK").await;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(change: Change, at: &str) -> Command {
        Command {
            channel: "store-eu".into(),
            change,
            at: at.into(),
            by: "op@host".into(),
        }
    }

    #[test]
    fn the_log_folds_to_the_last_word_and_repeats_change_nothing() {
        let mut o = Override::default();
        o.apply(&cmd(
            Change::Pause {
                reason: Some("number suspended".into()),
            },
            "t1",
        ))
        .unwrap();
        o.apply(&cmd(Change::Pause { reason: None }, "t2")).unwrap();
        assert_eq!(o.paused.as_ref().map(|p| p.since.as_str()), Some("t1"));
        o.apply(&cmd(
            Change::SetRate {
                rate: 5.0,
                burst: Some(2),
            },
            "t3",
        ))
        .unwrap();
        o.apply(&cmd(Change::Resume, "t4")).unwrap();
        assert_eq!(
            o,
            Override {
                paused: None,
                rate: Some((5.0, Some(2)))
            }
        );
        o.apply(&cmd(Change::Clear, "t5")).unwrap();
        assert_eq!(o, Override::default());
    }

    #[test]
    fn a_record_is_checked_like_any_input() {
        for (rate, burst) in [
            (f64::NAN, None),
            (-1.0, None),
            (1.0, Some(0)),
            (f64::INFINITY, None),
            (0.0001, None),
            (1_000_001.0, None),
            // Took every replica down once: governor's burst window overflowed.
            (0.01, Some(4_000_000_000)),
            (1.0, Some(100_001)),
        ] {
            assert!(
                cmd(Change::SetRate { rate, burst }, "t").check().is_err(),
                "rate {rate}, burst {burst:?} must be refused"
            );
        }
        let json = serde_json::to_string(&cmd(
            Change::SetRate {
                rate: 20.0,
                burst: None,
            },
            "t",
        ))
        .unwrap();
        assert!(json.contains("\"op\":\"set_rate\""), "{json}");
    }

    #[test]
    fn a_record_out_of_range_changes_nothing_when_folded() {
        let mut o = Override::default();
        let bad = cmd(
            Change::SetRate {
                rate: 0.01,
                burst: Some(4_000_000_000),
            },
            "t",
        );
        assert!(o.apply(&bad).unwrap_err().contains("burst 4000000000"));
        let long = cmd(
            Change::Pause {
                reason: Some("x".repeat(MAX_TEXT + 1)),
            },
            "t",
        );
        assert!(o.apply(&long).unwrap_err().starts_with("reason"));
        assert_eq!(o, Override::default());
    }

    #[test]
    fn every_budget_in_bounds_builds_a_quota_without_panicking() {
        for rate in [
            crate::config::MIN_RATE,
            0.5,
            1.0,
            999.9,
            crate::config::MAX_RATE,
        ] {
            for burst in [1, 7, crate::config::MAX_BURST] {
                assert!(crate::config::check_budget(rate, burst).is_ok());
                let l = crate::delivery::limit::Limiter::new(rate, burst);
                l.set_rate(rate, burst);
            }
        }
    }
}
