//! Following the control stream on this replica: catching up to a marker
//! at start, then applying each operator's command as it comes. A record
//! is input: one that cannot be applied, or panics while it is, is skipped
//! and counted, and the replica serves on.

use std::{panic::AssertUnwindSafe, time::Duration};

use futures_util::StreamExt;

use tracing::{debug, info};

use super::Worker;
use crate::delivery::channel::ChannelState;
use crate::observe::emit::{ControlRecordSkipped, Emit};
use crate::{
    broker::{Names, Publisher},
    ops::control::{self, Change, Command},
};

impl Worker {
    /// Appends a marker to the control stream and applies every command
    /// before it: the state every other replica is in.
    pub(super) async fn catch_up(
        &self,
        publisher: &Publisher,
        names: &Names,
        commands: &mut lapin::Consumer,
    ) -> anyhow::Result<()> {
        let id = ulid::Ulid::generate().to_string();
        let marker = Command::new("", Change::Marker { id: id.clone() });
        control::append(publisher, names, &marker).await?;
        let started = std::time::Instant::now();
        match self.follow(commands, Some(&id)).await {
            Followed::CaughtUp => {
                info!(
                    took_ms = started.elapsed().as_millis(),
                    channels = self.roster.len(),
                    "caught up with the control stream"
                );
                Ok(())
            }
            Followed::Ended(e) => Err(e),
        }
    }

    /// Applies operators' commands as they come. Returns when the stream
    /// ends or, with `until`, at that marker — or when, before it, the stream
    /// gives nothing for [`CATCH_UP_STALL`]. That bounds the wait, not the
    /// read: a stream that grew for years takes as long as it takes, while a
    /// stream that stopped answering ends the session.
    pub(super) async fn follow(
        &self,
        commands: &mut lapin::Consumer,
        until: Option<&str>,
    ) -> Followed {
        loop {
            let next = if until.is_some() {
                match tokio::time::timeout(CATCH_UP_STALL, commands.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Followed::Ended(anyhow::anyhow!(
                            "the control stream gave no record for {} s before this replica's marker",
                            CATCH_UP_STALL.as_secs()
                        ));
                    }
                }
            } else {
                commands.next().await
            };
            let Some(next) = next else { break };
            let delivery = match next {
                Ok(d) => d,
                Err(e) => {
                    return Followed::Ended(
                        anyhow::Error::new(e).context("reading the control stream"),
                    );
                }
            };
            let command = match control::read(delivery).await {
                Ok(c) => c,
                Err(why) => {
                    self.reject(&why, "unreadable");
                    continue;
                }
            };
            if let Change::Marker { id } = &command.change {
                if until == Some(id.as_str()) {
                    return Followed::CaughtUp;
                }
                continue;
            }
            // A record is input: one that cannot be applied (or panics in a
            // dependency while it is) is skipped, and the replica goes on.
            let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.apply(&command, until.is_some())
            }));
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(why)) => self.reject(&why, "out_of_range"),
                Err(panic) => self.reject(
                    &crate::observe::logging::panic_message(panic.as_ref()),
                    "panicked",
                ),
            }
        }
        Followed::Ended(anyhow::anyhow!("the control stream ended"))
    }
}

impl Worker {
    /// Applies one operator's command: a channel added or removed, or a
    /// change to the channel it names (a channel this replica does not
    /// serve ignores it). While `catching_up`, channels added and removed
    /// are logged at DEBUG: a replica's start folds every one since the
    /// first, and the catch-up's own line says how many it serves.
    fn apply(&self, command: &Command, catching_up: bool) -> Result<(), String> {
        if let Some(hook) = self.shared.fault {
            hook(&format!("control:{}", command.channel));
        }
        match &command.change {
            Change::Add { rate, burst, key } => {
                command.check()?;
                self.add(&command.channel, *rate, *burst, key, catching_up);
                Ok(())
            }
            Change::Remove => {
                command.check()?;
                self.remove(&command.channel, catching_up);
                Ok(())
            }
            _ => match self.roster.find(&command.channel) {
                Some(ch) => ch.apply(command, &self.shared.metrics),
                None => Ok(()),
            },
        }
    }

    /// Serves a channel added at run time: its key read from
    /// `worker.channel_keys_dir` here (never from the broker); the session
    /// declares its queue and starts its consumers.
    fn add(&self, name: &str, rate: f64, burst: Option<u32>, key: &str, catching_up: bool) {
        let config = &self.shared.config;
        if config.channel(name).is_some() {
            self.reject(
                &format!("add {name}: configured in the file; its entry there is what counts"),
                "refused",
            );
            return;
        }
        if self.roster.find(name).is_some() {
            return;
        }
        let Some(dir) = &config.worker.channel_keys_dir else {
            self.reject(
                &format!("add {name}: worker.channel_keys_dir is not set on this replica"),
                "refused",
            );
            return;
        };
        let channel = crate::config::ChannelConfig::added(name, rate, burst, dir.join(key));
        let key = match channel.api_key(0) {
            Ok(k) => k,
            Err(e) => {
                self.reject(&format!("add {name}: {e}"), "refused");
                return;
            }
        };
        let delays: Vec<String> = crate::broker::topology::delay_queues(config)
            .iter()
            .map(|d| crate::broker::topology::delay_label(*d))
            .collect();
        self.shared.metrics.register_channel(
            name,
            rate,
            &delays,
            self.roster.len().saturating_add(1),
        );
        let state = ChannelState::new(channel, key, None, &config.broker);
        if self.roster.add(std::sync::Arc::new(state)) {
            if catching_up {
                debug!(channel = name, rate, "channel added");
            } else {
                info!(channel = name, rate, "channel added");
            }
        }
    }

    /// Stops serving a channel added at run time; its jobs stay queued.
    fn remove(&self, name: &str, catching_up: bool) {
        if self.shared.config.channel(name).is_some() {
            self.reject(
                &format!("remove {name}: configured in the file; remove it there"),
                "refused",
            );
            return;
        }
        if self.roster.remove(name).is_some() {
            self.shared.metrics.forget_channel(name);
            if catching_up {
                debug!(channel = name, "channel removed");
            } else {
                info!(
                    channel = name,
                    "channel removed; its jobs stay in its queue"
                );
            }
        }
    }

    fn reject(&self, why: &str, reason: &'static str) {
        ControlRecordSkipped { why, reason }.emit(&self.shared.metrics);
    }
}

/// The longest wait for the next record while catching up.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);

/// How following the control stream ended.
pub(super) enum Followed {
    CaughtUp,
    Ended(anyhow::Error),
}
