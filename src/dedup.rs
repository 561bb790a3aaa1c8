//! The recent-`job_id` memory: jobs this process has already sent, with
//! their `sent` event, so a redelivered or re-published job is not sent twice
//! (CONTRACT §10). Bounded by count and by age; the oldest entries go first.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct Dedup {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    events: HashMap<(String, String), (Instant, Vec<u8>)>,
    order: VecDeque<(Instant, (String, String))>,
}

impl Dedup {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remembers that `job_id` on `channel` was sent, with its event body.
    pub fn remember(&self, channel: &str, job_id: &str, event: Vec<u8>) {
        self.remember_at(channel, job_id, event, Instant::now());
    }

    fn remember_at(&self, channel: &str, job_id: &str, event: Vec<u8>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (channel.to_owned(), job_id.to_owned());
        inner.events.insert(key.clone(), (now, event));
        inner.order.push_back((now, key));
        self.evict(&mut inner, now);
    }

    /// The `sent` event of a job sent recently, if any.
    pub fn sent_event(&self, channel: &str, job_id: &str) -> Option<Vec<u8>> {
        self.sent_event_at(channel, job_id, Instant::now())
    }

    fn sent_event_at(&self, channel: &str, job_id: &str, now: Instant) -> Option<Vec<u8>> {
        let mut inner = self.inner.lock().ok()?;
        self.evict(&mut inner, now);
        let key = (channel.to_owned(), job_id.to_owned());
        inner.events.get(&key).map(|(_, e)| e.clone())
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, key)) = inner.order.front().cloned() {
            let too_many = inner.events.len() > self.capacity;
            let too_old = now.duration_since(at) >= self.ttl;
            if !too_many && !too_old {
                break;
            }
            inner.order.pop_front();
            // Only drop the entry if it was not refreshed by a later remember().
            if inner.events.get(&key).is_some_and(|(t, _)| *t == at) {
                inner.events.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_sent_jobs_per_channel() {
        let d = Dedup::new(10, Duration::from_secs(60));
        d.remember("a", "j1", b"e1".to_vec());
        assert_eq!(d.sent_event("a", "j1").as_deref(), Some(&b"e1"[..]));
        assert_eq!(d.sent_event("b", "j1"), None);
    }

    #[test]
    fn forgets_after_the_ttl() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        d.remember_at("a", "j1", b"e".to_vec(), t0);
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
        let d = Dedup::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for (i, j) in ["j1", "j2", "j3"].iter().enumerate() {
            d.remember_at("a", j, vec![], t0 + Duration::from_millis(i as u64));
        }
        assert!(d.sent_event_at("a", "j1", t0).is_none());
        assert!(d.sent_event_at("a", "j2", t0).is_some());
        assert!(d.sent_event_at("a", "j3", t0).is_some());
    }
}
