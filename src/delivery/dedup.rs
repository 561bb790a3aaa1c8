//! The recent-`job_id` memory (docs/contract.md §10): jobs this process has sent,
//! with how each send came out, so a redelivered or re-published job is not
//! sent twice — its `sent` event is rebuilt and re-published instead. What
//! is kept is [`SentEvent::kept`](crate::events::SentEvent::kept) (~100
//! bytes), not the event: the job that comes back carries its id and
//! metadata again. Bounded by count, bytes and age; the oldest entries go
//! first.
//!
//! It also knows which jobs are in flight: a second delivery of a job that is
//! being sent right now waits for the first to finish, then looks again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// `channel` NUL `job_id` (a channel name has no NUL): one allocation,
/// shared by the map and the eviction order.
type Key = Arc<str>;

fn key(channel: &str, job_id: &str) -> String {
    let mut k = String::with_capacity(channel.len().saturating_add(job_id.len()).saturating_add(1));
    k.push_str(channel);
    k.push('\0');
    k.push_str(job_id);
    k
}

/// What an entry costs beyond its key and kept bytes: its map slot, its
/// place in the eviction order and the allocator's rounding.
const ENTRY_OVERHEAD: usize = 160;

pub(crate) struct Dedup {
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// What each send came to, at its exact size.
    events: HashMap<Key, (Instant, Box<[u8]>)>,
    order: VecDeque<(Instant, Key)>,
    /// What `events` costs, by `cost()`.
    bytes: usize,
    /// Jobs being worked on. A duplicate that waits watches the sender
    /// (made when the first one waits), which drops when the claim ends.
    in_flight: HashMap<Key, Option<watch::Sender<()>>>,
}

/// What to do with a delivery.
pub(crate) enum Begin<'a> {
    /// Sent recently: what was kept of its event, to re-publish instead.
    Sent(Vec<u8>),
    /// Nobody else has it: go ahead; the claim ends when dropped.
    Go(Claim<'a>),
    /// Another delivery of the same job is in flight: wait, then ask again.
    Wait(watch::Receiver<()>),
}

/// A claim on a job in flight. Dropping it wakes any waiting duplicate.
pub(crate) struct Claim<'a> {
    dedup: &'a Dedup,
    key: Key,
}

impl Claim<'_> {
    /// Remembers that the claimed job was sent, with what
    /// [`SentEvent::kept`](crate::events::SentEvent::kept) wrote.
    pub(crate) fn remember(&self, kept: Vec<u8>) {
        self.dedup.remember_at(&self.key, kept, Instant::now());
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.dedup.inner.lock() {
            inner.in_flight.remove(&self.key);
        }
    }
}

fn cost(key: &str, event: &[u8]) -> usize {
    key.len()
        .saturating_add(event.len())
        .saturating_add(ENTRY_OVERHEAD)
}

impl Dedup {
    pub(crate) fn new(capacity: usize, max_bytes: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            max_bytes,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Claims `job_id` on `channel`, or says why not.
    pub(crate) fn begin(&self, channel: &str, job_id: &str) -> Begin<'_> {
        let wanted = key(channel, job_id);
        let Ok(mut inner) = self.inner.lock() else {
            // A poisoned lock only loses the memory, never a job.
            return Begin::Go(Claim {
                dedup: self,
                key: Arc::from(wanted),
            });
        };
        self.evict(&mut inner, Instant::now());
        if let Some((_, event)) = inner.events.get(wanted.as_str()) {
            return Begin::Sent(event.to_vec());
        }
        if let Some(tx) = inner.in_flight.get_mut(wanted.as_str()) {
            return Begin::Wait(tx.get_or_insert_with(|| watch::channel(()).0).subscribe());
        }
        let key: Key = Arc::from(wanted);
        inner.in_flight.insert(key.clone(), None);
        Begin::Go(Claim { dedup: self, key })
    }

    fn remember_at(&self, key: &Key, kept: Vec<u8>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = key.clone();
        let added = cost(&key, &kept);
        if let Some((_, old)) = inner
            .events
            .insert(key.clone(), (now, kept.into_boxed_slice()))
        {
            inner.bytes = inner.bytes.saturating_sub(cost(&key, &old));
        }
        inner.bytes = inner.bytes.saturating_add(added);
        inner.order.push_back((now, key));
        self.evict(&mut inner, now);
    }

    #[cfg(test)]
    fn sent_event_at(&self, channel: &str, job_id: &str, now: Instant) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().ok()?;
        self.evict(&mut inner, now);
        inner
            .events
            .get(key(channel, job_id).as_str())
            .map(|(_, e)| e.to_vec())
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        // Called for every job: look at the oldest without copying its key.
        while let Some(&(at, _)) = inner.order.front() {
            let too_many = inner.events.len() > self.capacity || inner.bytes > self.max_bytes;
            let too_old = now.duration_since(at) >= self.ttl;
            if !too_many && !too_old {
                break;
            }
            let Some((at, key)) = inner.order.pop_front() else {
                break;
            };
            // Only drop the entry if it was not refreshed by a later remember().
            if inner.events.get(&key).is_some_and(|(t, _)| *t == at)
                && let Some((_, old)) = inner.events.remove(&key)
            {
                inner.bytes = inner.bytes.saturating_sub(cost(&key, &old));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Dedup {
        /// Remembers `job_id` on `channel` as a claim would.
        fn put(&self, channel: &str, job_id: &str, kept: Vec<u8>, now: Instant) {
            self.remember_at(&Arc::from(key(channel, job_id)), kept, now);
        }
    }

    #[test]
    fn remembers_sent_jobs_per_channel() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        d.put("a", "j1", b"e1".to_vec(), Instant::now());
        assert!(matches!(d.begin("a", "j1"), Begin::Sent(e) if e == b"e1"));
        assert!(matches!(d.begin("b", "j1"), Begin::Go(_)));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        let t0 = Instant::now();
        d.put("a", "j1", b"e".to_vec(), t0);
        assert!(
            d.sent_event_at("a", "j1", t0 + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            d.sent_event_at("a", "j1", t0 + Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn keeps_at_most_capacity_entries() {
        let d = Dedup::new(2, usize::MAX, Duration::from_secs(60));
        let t0 = Instant::now();
        for (i, j) in ["j1", "j2", "j3"].iter().enumerate() {
            d.put("a", j, vec![], t0 + Duration::from_millis(i as u64));
        }
        assert!(d.sent_event_at("a", "j1", t0).is_none());
        assert!(d.sent_event_at("a", "j2", t0).is_some());
        assert!(d.sent_event_at("a", "j3", t0).is_some());
    }

    #[test]
    fn entries_as_large_as_octopods_can_make_them_stay_within_the_byte_budget() {
        // Octopods' answer (up to 256 KiB read) decides how long its ids are.
        let budget = 1024 * 1024;
        let d = Dedup::new(10_000, budget, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..1_000_u64 {
            let job = format!("j{i}");
            d.put("a", &job, vec![b'x'; 4600], t0 + Duration::from_millis(i));
        }
        let inner = d.inner.lock().expect("not poisoned");
        assert!(inner.bytes <= budget, "{} bytes held", inner.bytes);
        let held: usize = inner.events.iter().map(|(k, (_, e))| cost(k, e)).sum();
        assert_eq!(held, inner.bytes, "the count is what is held");
        assert!(inner.events.len() > 200, "the newest are kept");
        drop(inner);
        assert!(d.sent_event_at("a", "j999", t0).is_some());
        assert!(d.sent_event_at("a", "j0", t0).is_none());
    }

    #[test]
    fn a_refreshed_entry_is_counted_once() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        let t0 = Instant::now();
        d.put("a", "j", vec![0; 100], t0);
        d.put("a", "j", vec![0; 50], t0 + Duration::from_millis(1));
        let bytes = d.inner.lock().expect("not poisoned").bytes;
        assert_eq!(bytes, cost("a\0j", &[0; 50]));
    }

    #[tokio::test]
    async fn a_duplicate_in_flight_waits_for_the_first_then_sees_it_sent() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        let Begin::Go(claim) = d.begin("a", "j") else {
            panic!("first delivery goes")
        };
        let Begin::Wait(mut rx) = d.begin("a", "j") else {
            panic!("second waits")
        };
        let Begin::Wait(mut rx2) = d.begin("a", "j") else {
            panic!("a third waits too")
        };
        claim.remember(b"kept".to_vec());
        drop(claim);
        rx.changed().await.expect_err("the claim's sender is gone");
        rx2.changed().await.expect_err("every waiter is woken");
        assert!(matches!(d.begin("a", "j"), Begin::Sent(k) if k == b"kept"));
        assert!(d.inner.lock().expect("not poisoned").in_flight.is_empty());
    }

    #[test]
    fn a_claim_nobody_waits_for_makes_no_channel() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        let Begin::Go(_claim) = d.begin("a", "j") else {
            panic!()
        };
        let inner = d.inner.lock().expect("not poisoned");
        assert!(inner.in_flight.values().all(Option::is_none));
    }

    #[test]
    fn a_failed_first_attempt_lets_the_duplicate_go() {
        let d = Dedup::new(10, usize::MAX, Duration::from_secs(60));
        let Begin::Go(claim) = d.begin("a", "j") else {
            panic!()
        };
        drop(claim);
        assert!(matches!(d.begin("a", "j"), Begin::Go(_)));
    }
}
