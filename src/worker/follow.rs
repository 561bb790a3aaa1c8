//! Following the control stream on this replica: catching up to a marker
//! at start, then applying each operator's command as it comes. A record
//! is input: one that cannot be applied, or panics while it is, is skipped
//! and counted, and the replica serves on.

use std::{panic::AssertUnwindSafe, time::Duration};

use futures_util::StreamExt;

use super::Worker;
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
        match tokio::time::timeout(Duration::from_secs(30), self.follow(commands, Some(&id))).await
        {
            Ok(Followed::CaughtUp) => Ok(()),
            Ok(Followed::Ended(e)) => Err(e),
            Err(_) => Err(anyhow::anyhow!(
                "the control stream did not give back its marker within 30 s"
            )),
        }
    }

    /// Applies operators' commands as they come. Returns when the stream
    /// ends or, with `until`, at that marker.
    pub(super) async fn follow(
        &self,
        commands: &mut lapin::Consumer,
        until: Option<&str>,
    ) -> Followed {
        while let Some(next) = commands.next().await {
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
            let applied = std::panic::catch_unwind(AssertUnwindSafe(|| self.apply(&command)));
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
    /// Applies one operator's command to the channel it names (a channel
    /// this replica does not serve ignores it).
    fn apply(&self, command: &Command) -> Result<(), String> {
        if let Some(hook) = self.shared.fault {
            hook(&format!("control:{}", command.channel));
        }
        match self
            .channels
            .iter()
            .find(|c| c.config.name == command.channel)
        {
            Some(ch) => ch.apply(command, &self.shared.metrics),
            None => Ok(()),
        }
    }

    fn reject(&self, why: &str, reason: &'static str) {
        ControlRecordSkipped { why, reason }.emit(&self.shared.metrics);
    }
}

/// How following the control stream ended.
pub(super) enum Followed {
    CaughtUp,
    Ended(anyhow::Error),
}
