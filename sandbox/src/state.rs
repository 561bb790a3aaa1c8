//! What a running sandbox remembers: its scripts, the request log and the
//! messages it accepted (for status polls).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    SandboxConfig,
    api::timestamp,
    script::{Fault, Running, Script},
};

/// One request as received.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Recorded {
    pub seq: u64,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
    pub at: String,
    pub auth: Option<String>,
    pub phone: Option<String>,
    /// The request path (interactive or a template's).
    #[serde(default)]
    pub path: String,
    pub body: String,
    pub status: u16,
}

pub(crate) struct SandboxState {
    pub(crate) config: SandboxConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) scripts: Mutex<HashMap<Option<String>, Running>>,
    pub(crate) log: Mutex<Vec<Recorded>>,
    /// Messages accepted: when, and to which phone (for status polls).
    pub(crate) sent: Mutex<HashMap<String, (Instant, String)>>,
    pub(crate) per_key: Option<governor::DefaultKeyedRateLimiter<String>>,
    /// Where a sent message's conversation is opened (an Intercom stand-in).
    pub(crate) conversations: Mutex<Option<crate::inbox::intercom::Conversations>>,
}

impl SandboxState {
    pub(crate) fn add_script(&self, script: Script) {
        let running = Running {
            next: 0,
            rounds_left: script.repeat,
            until: script
                .for_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            script,
        };
        if let Ok(mut s) = self.scripts.lock() {
            s.insert(running.script.phone.clone(), running);
        }
    }

    pub(crate) fn scripted(&self, phone: Option<&str>) -> Option<Fault> {
        let mut scripts = self.scripts.lock().ok()?;
        let now = Instant::now();
        // A script for this phone first, then the global one.
        for key in [phone.map(str::to_owned), None] {
            let Some(running) = scripts.get_mut(&key) else {
                continue;
            };
            let (fault, done) = running.take(now);
            if done {
                scripts.remove(&key);
            }
            if fault.is_some() {
                return fault;
            }
        }
        None
    }
}

pub(crate) fn record(
    s: &SandboxState,
    arrived: Instant,
    auth: Option<String>,
    phone: Option<String>,
    path: String,
    body: &str,
    status: u16,
) {
    if let Ok(mut log) = s.log.lock() {
        let seq = u64::try_from(log.len()).unwrap_or(u64::MAX);
        log.push(Recorded {
            seq,
            at_ms: u64::try_from(arrived.duration_since(s.started).as_millis()).unwrap_or(u64::MAX),
            at: timestamp(time::OffsetDateTime::now_utc()),
            auth,
            phone,
            path,
            body: body.to_owned(),
            status,
        });
    }
}
