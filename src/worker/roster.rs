//! The [`Roster`]: the channels this replica serves — the configuration
//! file's, and those added at run time through the control stream
//! (docs/contract.md §16) — and the signal the session starts consumers on.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::delivery::channel::ChannelState;

#[derive(Default)]
pub(crate) struct Roster {
    channels: Mutex<BTreeMap<String, Arc<ChannelState>>>,
    /// Told when a channel is added or removed.
    pub(crate) changed: Notify,
}

impl Roster {
    pub(crate) fn new(channels: impl IntoIterator<Item = Arc<ChannelState>>) -> Self {
        Self {
            channels: Mutex::new(
                channels
                    .into_iter()
                    .map(|c| (c.config.name.clone(), c))
                    .collect(),
            ),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ChannelState>>> {
        match self.channels.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<ChannelState>> {
        self.lock().get(name).cloned()
    }

    /// Every channel served now, by name.
    pub(crate) fn all(&self) -> Vec<Arc<ChannelState>> {
        self.lock().values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Serves `channel` from now on (`false`: one of that name is served).
    pub(crate) fn add(&self, channel: Arc<ChannelState>) -> bool {
        let added = {
            let mut all = self.lock();
            if all.contains_key(&channel.config.name) {
                false
            } else {
                all.insert(channel.config.name.clone(), channel);
                true
            }
        };
        if added {
            self.changed.notify_one();
        }
        added
    }

    /// Stops serving `name`: its consumers stop and hand back what they hold.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<ChannelState>> {
        let removed = self.lock().remove(name);
        if let Some(c) = &removed {
            c.removed.cancel();
            self.changed.notify_one();
        }
        removed
    }
}
