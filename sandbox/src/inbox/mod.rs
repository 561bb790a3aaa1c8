//! Stand-ins for the inboxes a customer's answer lands in (written from
//! `docs/inbox-replies.md`, not from the worker): Intercom and HubSpot.
//! Each keeps contacts and conversations per phone, answers its API's
//! lookups with a Bearer token, and — when a test or the demo "taps" an
//! option for a phone — signs and delivers the webhook the real platform
//! would, at least once: retried on 5xx, 429, timeouts and refused
//! connections, as the platforms document.

pub mod hubspot;
pub mod intercom;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde::Serialize;

pub use hubspot::{Hubspot, HubspotConfig};
pub use intercom::{Intercom, IntercomConfig};

/// One webhook delivery attempt, for tests.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    /// The HTTP status, or `None` when there was no answer.
    pub status: Option<u16>,
}

/// What delivering one webhook came to.
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    pub attempts: Vec<Attempt>,
    /// The final status (2xx: delivered).
    pub status: Option<u16>,
}

impl Delivered {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Lookups answer 503 this many more times (a flaky platform API), or
/// hang this many more times; and how many were asked.
#[derive(Default)]
pub(crate) struct Faults {
    lookups: AtomicU32,
    hangs: AtomicU32,
    asked: AtomicU32,
}

impl Faults {
    pub(crate) fn hang_lookups(&self, n: u32) {
        self.hangs.store(n, Ordering::SeqCst);
    }

    /// Counts a lookup; hangs for good if one is due to (the caller's
    /// timeout ends it).
    pub(crate) async fn asked(&self) {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
    }

    pub(crate) fn lookups_asked(&self) -> u32 {
        self.asked.load(Ordering::SeqCst)
    }

    pub(crate) fn fail_lookups(&self, n: u32) {
        self.lookups.store(n, Ordering::SeqCst);
    }

    /// Whether this lookup fails (spending one).
    pub(crate) fn lookup_fails(&self) -> bool {
        self.lookups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The headers of one attempt (its number, the body's bytes).
pub(crate) type Headers<'a> = &'a (dyn Fn(u32, &[u8]) -> Vec<(String, String)> + Sync);

/// Posts `body` with `headers` (made fresh for each attempt: a signature may
/// cover the timestamp) until a final answer: 2xx, or a status the
/// platform does not retry; at most `tries` attempts, backing off from 100 ms.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    url: &str,
    body: &(dyn Fn(u32) -> Vec<u8> + Sync),
    headers: Headers<'_>,
    retried: &(dyn Fn(u16) -> bool + Sync),
    tries: u32,
) -> Delivered {
    let mut attempts = Vec::new();
    let mut wait = Duration::from_millis(100);
    let mut status = None;
    for attempt in 1..=tries.max(1) {
        let bytes = body(attempt);
        let mut request = http.post(url).header("content-type", "application/json");
        for (k, v) in headers(attempt, &bytes) {
            request = request.header(k, v);
        }
        status = request
            .body(bytes)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        attempts.push(Attempt { attempt, status });
        match status {
            Some(s) if (200..300).contains(&s) || !retried(s) => break,
            _ => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
    Delivered { attempts, status }
}

/// Where a stand-in's webhooks go; a restarted worker listens elsewhere.
pub(crate) struct Webhook(std::sync::Mutex<String>);

impl Webhook {
    pub(crate) fn new(url: &str) -> Self {
        Self(std::sync::Mutex::new(url.to_owned()))
    }

    pub(crate) fn set(&self, url: &str) {
        match self.0.lock() {
            Ok(mut w) => *w = url.to_owned(),
            Err(p) => *p.into_inner() = url.to_owned(),
        }
    }

    pub(crate) fn get(&self) -> String {
        match self.0.lock() {
            Ok(w) => w.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub(crate) fn bearer_is(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(token)
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// `<p>text</p>` with `<`, `>` and `&` escaped: how Intercom carries a
/// WhatsApp message's text (before API version 2.15).
pub(crate) fn html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<p>{escaped}</p>")
}

/// Where a stand-in's ids start: the real platforms never reuse an id, and
/// a worker remembers answered ids for its longest window (a month), so a
/// stand-in started again (the demo run twice) must not either. Milliseconds
/// since the epoch × 1,000: unique per start, room for 1,000 ids a millisecond.
pub(crate) fn first_id() -> u64 {
    let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).unwrap_or(0).saturating_mul(1000)
}

pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
