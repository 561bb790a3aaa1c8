//! Per-channel rate limits (`governor`): a job waits for its channel's next
//! slot instead of being rejected, and a 429 pauses the whole channel for its
//! `Retry-After`.
//!
//! One limiter per channel per process. Across replicas the budget holds
//! because each channel queue has a single active consumer (CONTRACT §8).

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};

/// The slowest rate a channel may have: one send per 1,000 s.
pub(crate) const MIN_RATE: f64 = 0.001;
/// The fastest rate a channel may have, in sends per second.
pub(crate) const MAX_RATE: f64 = 1_000_000.0;
/// The largest burst a channel may have.
pub(crate) const MAX_BURST: u32 = 100_000;

/// Checks a rate and burst against the bounds every source (config, the
/// `channel` command, a control record) must keep. Within them governor's
/// arithmetic cannot overflow: its burst window is the period times the
/// burst, at most 1,000 s × 100,000 = 10^17 ns, well under `u64::MAX` ns.
pub(crate) fn check_budget(rate_per_second: f64, burst: u32) -> Result<(), String> {
    if !(rate_per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate_per_second)) {
        return Err(format!(
            "rate {rate_per_second}: must be from {MIN_RATE} to {MAX_RATE} per second"
        ));
    }
    if !(1..=MAX_BURST).contains(&burst) {
        return Err(format!("burst {burst}: must be from 1 to {MAX_BURST}"));
    }
    Ok(())
}

/// Builds the quota for `rate_per_second` (fractions allowed) and `burst`,
/// clamped to the bounds of [`check_budget`] (which every caller has
/// already applied), with checked conversions only: no value can panic here.
pub(crate) fn quota(rate_per_second: f64, burst: u32) -> Quota {
    let rate = if rate_per_second.is_finite() {
        rate_per_second.clamp(MIN_RATE, MAX_RATE)
    } else {
        MIN_RATE
    };
    let period = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(1000));
    let burst = NonZeroU32::new(burst.clamp(1, MAX_BURST)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Counts a waiting send while alive.
struct Waiting<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A channel's limiter.
pub(crate) struct Limiter {
    /// Replaced whole when the rate changes at run time.
    governor: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// Bumped on each change, to wake jobs waiting on the old limiter.
    changed: tokio::sync::watch::Sender<u64>,
    /// Sends waiting for a slot: status polls wait until there are none.
    sends_waiting: tokio::sync::watch::Sender<usize>,
    /// Held by the one job of this channel that waits for a request permit
    /// and then its rate slot: a channel waiting on its budget holds at
    /// most one of the permits every channel shares.
    head: tokio::sync::Mutex<()>,
    /// Optional per-recipient pacing, keyed by phone number.
    recipients: Option<DefaultKeyedRateLimiter<String>>,
    paused_until: Mutex<Option<Instant>>,
}

impl Limiter {
    pub(crate) fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            governor: RwLock::new(Arc::new(RateLimiter::direct(quota(rate_per_second, burst)))),
            changed: tokio::sync::watch::Sender::new(0),
            sends_waiting: tokio::sync::watch::Sender::new(0),
            head: tokio::sync::Mutex::new(()),
            recipients: None,
            paused_until: Mutex::new(None),
        }
    }

    /// Also allow at most one message per `interval` to the same recipient.
    pub(crate) fn with_recipient_interval(mut self, interval: Option<Duration>) -> Self {
        self.recipients = interval
            .filter(|i| !i.is_zero())
            .and_then(Quota::with_period)
            .map(RateLimiter::keyed);
        self
    }

    /// A status poll's turn: only while no send waits (sends go first on
    /// the channel's one budget), then as [`Limiter::turn`].
    pub(crate) async fn turn_low_priority<'a>(
        &self,
        open: &'a Semaphore,
    ) -> Option<SemaphorePermit<'a>> {
        let mut waiting = self.sends_waiting.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        drop(waiting.wait_for(|n| *n == 0).await);
        self.head_turn(open).await
    }

    /// A send's turn: the recipient's pacing (if any), then a request permit
    /// from `open` and the channel's next slot, in that order (permits freed
    /// in bulk never spend more than the rate allows). Only one job of the
    /// channel at a time waits for a permit and slot, so a channel slowed to
    /// a crawl holds one permit, not all of them (CONTRACT §8: one channel
    /// never blocks another). Returns the permit (none if the semaphore was
    /// closed) and how long the turn took.
    pub(crate) async fn turn<'a>(
        &self,
        recipient: &str,
        open: &'a Semaphore,
    ) -> (Option<SemaphorePermit<'a>>, Duration) {
        let started = Instant::now();
        self.sends_waiting.send_modify(|n| *n = n.saturating_add(1));
        let _waiting = Waiting(&self.sends_waiting);
        if let Some(recipients) = &self.recipients {
            recipients.until_key_ready(&recipient.to_owned()).await;
            // Forget recipients whose slot is free again, so memory stays bounded.
            if recipients.len() > 10_000 {
                recipients.retain_recent();
            }
        }
        let permit = self.head_turn(open).await;
        (permit, started.elapsed())
    }

    async fn head_turn<'a>(&self, open: &'a Semaphore) -> Option<SemaphorePermit<'a>> {
        let _head = self.head.lock().await;
        let permit = open.acquire().await.ok();
        self.slot().await;
        permit
    }

    /// The channel's next slot, after any 429 pause, on the limiter in force.
    async fn slot(&self) {
        loop {
            if let Some(until) = self.pause_deadline() {
                tokio::time::sleep_until(until).await;
            }
            let governor = self.current();
            let mut changed = self.changed.subscribe();
            tokio::select! {
                () = governor.until_ready() => {}
                // A new rate: wait on the new limiter instead.
                _ = changed.changed() => continue,
            }
            // A 429 may have paused the channel while we waited for the slot.
            if self.pause_deadline().is_none() {
                return;
            }
        }
    }

    /// A new rate and burst from now on. The new limiter starts empty, so the
    /// burst fills up at the new rate, never at once.
    pub(crate) fn set_rate(&self, rate_per_second: f64, burst: u32) {
        let fresh = RateLimiter::direct(quota(rate_per_second, burst));
        if let Some(n) = NonZeroU32::new(burst) {
            drop(fresh.check_n(n));
        }
        if let Ok(mut g) = self.governor.write() {
            *g = Arc::new(fresh);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn current(&self) -> Arc<DefaultDirectRateLimiter> {
        match self.governor.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Holds every job of the channel back for `pause` (from a 429's `Retry-After`).
    pub(crate) fn pause(&self, pause: Duration) {
        let until = crate::clock::after(pause);
        if let Ok(mut p) = self.paused_until.lock() {
            *p = Some(p.map_or(until, |cur| cur.max(until)));
        }
    }

    fn pause_deadline(&self) -> Option<Instant> {
        let mut p = self.paused_until.lock().ok()?;
        match *p {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *p = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn admitted_over(rate: f64, burst: u32, seconds: u64) -> u32 {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota(rate, burst), clock.clone());
        let mut admitted = 0;
        // Step through `seconds` of fake time in 10 ms steps, both ends included.
        for _ in 0..=seconds * 100 {
            while limiter.check().is_ok() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(10));
        }
        admitted
    }

    #[test]
    fn ten_per_second_with_burst_one_admits_rate_times_t_plus_burst() {
        // 10 s at 10/s: 100 slots after the first, plus the burst of 1.
        assert_eq!(admitted_over(10.0, 1, 10), 101);
    }

    #[test]
    fn burst_is_available_at_once() {
        assert_eq!(admitted_over(20.0, 5, 0), 5);
    }

    #[test]
    fn recipient_pacing_is_keyed_by_phone() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::with_period(Duration::from_secs(6)).unwrap();
        let keyed = RateLimiter::dashmap_with_clock(quota, clock.clone());
        assert!(keyed.check_key(&"+1".to_owned()).is_ok());
        assert!(keyed.check_key(&"+1".to_owned()).is_err());
        assert!(keyed.check_key(&"+2".to_owned()).is_ok());
        clock.advance(Duration::from_secs(6));
        assert!(keyed.check_key(&"+1".to_owned()).is_ok());
    }

    #[test]
    fn fractional_rates_work() {
        // One every 2 s: at 0, 2, 4, 6, 8, 10.
        assert_eq!(admitted_over(0.5, 1, 10), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_the_channel_back() {
        let limiter = Limiter::new(1000.0, 10);
        let open = Semaphore::new(1);
        limiter.pause(Duration::from_secs(3));
        let (_, waited) = limiter.turn("+1", &open).await;
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert!(limiter.turn("+1", &open).await.1 < Duration::from_millis(10));
    }

    #[test]
    fn a_new_rate_starts_with_an_empty_burst() {
        let l = Limiter::new(1.0, 1);
        l.set_rate(1000.0, 50);
        // The 50 of burst fill up at the new rate, not at once.
        let g = l.current();
        let admitted = (0..50).filter(|_| g.check().is_ok()).count();
        assert!(
            admitted <= 1,
            "{admitted} admitted at once after the change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_poll_waits_while_a_send_waits() {
        let l = Limiter::new(1_000_000.0, 1000);
        l.sends_waiting.send_modify(|n| *n += 1);
        let send = Waiting(&l.sends_waiting);
        let open = Semaphore::new(1);
        let poll = l.turn_low_priority(&open);
        tokio::pin!(poll);
        let waited = tokio::time::timeout(Duration::from_secs(60), &mut poll).await;
        assert!(waited.is_err(), "the poll took a slot while a send waited");
        drop(send);
        tokio::time::timeout(Duration::from_secs(1), poll)
            .await
            .expect("the poll goes once no send waits");
    }
}
