//! Per-channel rate limits (`governor`): a job waits for its channel's next
//! slot instead of being rejected, and a 429 pauses the whole channel for its
//! `Retry-After`.
//!
//! One limiter per channel per process. Across replicas the budget holds
//! because each channel queue has a single active consumer (docs/contract.md §8).
//!
//! The limiter is generic over its [`Pace`] — the clock governor reads and
//! the wait between two checks — so the turn logic runs in unit tests over a
//! fake clock that the waiting tasks themselves drive (tokio's paused time),
//! and in production over governor's default clock with `futures-timer`'s
//! precise waits (exactly what governor's own `until_ready` does).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};

use crate::config::{MAX_BURST, MAX_RATE, MIN_RATE};

/// Builds the quota for `rate_per_second` (fractions allowed) and `burst`,
/// clamped to the bounds of [`check_budget`](crate::config::check_budget) (which every caller has
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

/// What a limiter keeps time with: governor's clock, and a wait of a given
/// length on that clock.
pub(crate) trait Pace: Clock + Clone + Send + Sync + 'static {
    fn wait(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send;
}

/// The production pace: governor's default clock, waited on with
/// `futures-timer` (sub-millisecond wake-ups; tokio's timer rounds every
/// wait up to the next millisecond, which would cost a burst-1 channel at
/// 80/s about 4 % of its budget, since a late check is not made up later).
impl Pace for DefaultClock {
    fn wait(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send {
        futures_timer::Delay::new(d)
    }
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Per-recipient pacing: at most one send per `interval` to the same phone,
/// counted from each send's slot (when its request leaves), not from when
/// it began to wait — a job that waited on the channel's budget after its
/// recipient check would otherwise leave less than the interval before the
/// next one to the same phone.
struct Recipients {
    interval: Duration,
    /// Each recipient's last slot, behind a lock its next job holds while
    /// it waits for its own: jobs to one phone go one after another.
    last: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Recipients {
    /// Recipients kept before the idle ones are forgotten.
    const KEPT: usize = 10_000;

    fn gate(&self, recipient: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let Ok(mut last) = self.last.lock() else {
            // Poisoned only by a panic inside this block, which cannot
            // happen; pace nobody rather than fail a send.
            return Arc::default();
        };
        if last.len() >= Self::KEPT && !last.contains_key(recipient) {
            let now = Instant::now();
            last.retain(|_, gate| {
                Arc::strong_count(gate) > 1
                    || gate.try_lock().map_or(true, |at| {
                        at.and_then(|at| at.checked_add(self.interval))
                            .is_some_and(|end| now < end)
                    })
            });
        }
        last.entry(recipient.to_owned()).or_default().clone()
    }
}

/// Counts a waiting send while alive.
struct Waiting<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A channel's limiter.
pub(crate) struct Limiter<C: Pace = DefaultClock> {
    clock: C,
    /// Replaced whole when the rate changes at run time.
    governor: RwLock<Arc<Direct<C>>>,
    /// Bumped on each change, to wake jobs waiting on the old limiter.
    changed: tokio::sync::watch::Sender<u64>,
    /// Sends waiting for a slot: status polls wait until there are none.
    sends_waiting: tokio::sync::watch::Sender<usize>,
    /// Held by the one job of this channel that waits for a request permit
    /// and then its rate slot: a channel waiting on its budget holds at
    /// most one of the permits every channel shares.
    head: tokio::sync::Mutex<()>,
    /// Optional per-recipient pacing, keyed by phone number.
    recipients: Option<Recipients>,
    paused_until: Mutex<Option<Instant>>,
    /// After a takeover: the rate and burst to start afresh with once the
    /// handover pause ([`HANDOVER`]) is over.
    renewal: Mutex<Option<(f64, u32)>>,
}

/// How long a replica that takes a channel over from another holds back
/// its first send: the last holder's final requests may still be on their
/// way to Octopods, which counts them when they arrive, not when they left.
pub(crate) const HANDOVER: Duration = Duration::from_millis(100);

impl Limiter {
    pub(crate) fn new(rate_per_second: f64, burst: u32) -> Self {
        Self::with_pace(rate_per_second, burst, DefaultClock::default())
    }
}

impl<C: Pace> Limiter<C> {
    pub(crate) fn with_pace(rate_per_second: f64, burst: u32, clock: C) -> Self {
        let governor = RateLimiter::direct_with_clock(quota(rate_per_second, burst), clock.clone());
        Self {
            clock,
            governor: RwLock::new(Arc::new(governor)),
            changed: tokio::sync::watch::Sender::new(0),
            sends_waiting: tokio::sync::watch::Sender::new(0),
            head: tokio::sync::Mutex::new(()),
            recipients: None,
            paused_until: Mutex::new(None),
            renewal: Mutex::new(None),
        }
    }

    /// Also allow at most one message per `interval` to the same recipient.
    pub(crate) fn with_recipient_interval(mut self, interval: Option<Duration>) -> Self {
        self.recipients = interval
            .filter(|i| !i.is_zero())
            .map(|interval| Recipients {
                interval,
                last: Mutex::default(),
            });
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
    /// a crawl holds one permit, not all of them (docs/contract.md §8: one channel
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
        // The recipient's turn first, holding no permit: a job waiting for
        // its phone's interval holds back no other phone.
        let gate = self
            .recipients
            .as_ref()
            .map(|r| (r.interval, r.gate(recipient)));
        let mut last = match &gate {
            Some((interval, gate)) => {
                let last = gate.lock().await;
                // The interval is at most a day (config), so this never overflows.
                if let Some(end) = last.and_then(|at| at.checked_add(*interval)) {
                    tokio::time::sleep_until(end).await;
                }
                Some(last)
            }
            None => None,
        };
        let permit = self.head_turn(open).await;
        if let Some(last) = &mut last {
            **last = Some(Instant::now());
        }
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
            // Only the head (one task) gets here, so the renewal is taken once.
            let renewal = self.renewal.lock().ok().and_then(|mut r| r.take());
            if let Some((rate, burst)) = renewal {
                self.set_rate(rate, burst);
            }
            let governor = self.current();
            let mut changed = self.changed.subscribe();
            let ready = async {
                while let Err(not_until) = governor.check() {
                    self.clock
                        .wait(not_until.wait_time_from(self.clock.now()))
                        .await;
                }
            };
            tokio::select! {
                () = ready => {}
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
        let fresh =
            RateLimiter::direct_with_clock(quota(rate_per_second, burst), self.clock.clone());
        if let Some(n) = NonZeroU32::new(burst) {
            drop(fresh.check_n(n));
        }
        if let Ok(mut g) = self.governor.write() {
            *g = Arc::new(fresh);
        }
        // A takeover's handover still running starts afresh with this rate.
        if let Ok(mut r) = self.renewal.lock()
            && let Some(pending) = r.as_mut()
        {
            *pending = (rate_per_second, burst);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// This replica became the channel's active consumer: the budget starts
    /// empty [`HANDOVER`] from now (not now), so the requests the last holder
    /// sent just before, still on their way, never add up with ours to more
    /// than the budget allows in any window.
    pub(crate) fn take_over(&self, rate_per_second: f64, burst: u32) {
        self.set_rate(rate_per_second, burst);
        if let Ok(mut r) = self.renewal.lock() {
            *r = Some((rate_per_second, burst));
        }
        self.pause(HANDOVER);
    }

    fn current(&self) -> Arc<Direct<C>> {
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
    fn fractional_rates_work() {
        // One every 2 s: at 0, 2, 4, 6, 8, 10.
        assert_eq!(admitted_over(0.5, 1, 10), 6);
    }

    /// A fake clock the waiting tasks drive: governor reads tokio's paused
    /// time, and a wait is a tokio sleep, so time moves only when every task
    /// waits, straight to the next deadline. (governor's `FakeRelativeClock`
    /// only moves when a test advances it, which a limiter's own waits cannot.)
    #[derive(Clone)]
    struct Paused(Instant);

    impl Paused {
        fn start() -> Self {
            Self(Instant::now())
        }
    }

    impl Clock for Paused {
        type Instant = Duration;
        fn now(&self) -> Duration {
            self.0.elapsed()
        }
    }

    impl Pace for Paused {
        fn wait(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send {
            tokio::time::sleep(d)
        }
    }

    fn paced(rate: f64, burst: u32) -> Arc<Limiter<Paused>> {
        Arc::new(Limiter::with_pace(rate, burst, Paused::start()))
    }

    /// Takes turns on `limiter` one after another (each permit freed at once)
    /// until `until`; returns how many were taken.
    async fn turns_until(limiter: &Limiter<Paused>, open: &Semaphore, until: Instant) -> u32 {
        let mut taken = 0;
        loop {
            let turn = tokio::time::timeout_at(until, limiter.turn("+1", open)).await;
            match turn {
                Ok((Some(_permit), _)) => taken += 1,
                _ => return taken,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn turns_keep_rate_times_window_plus_burst() {
        let started = Instant::now();
        // 100/s is a whole number of milliseconds apart, so the fake clock
        // lands on every slot exactly: 10 s hold 1,000 slots plus the burst.
        let limiter = paced(100.0, 5);
        let open = Semaphore::new(4);
        let taken = turns_until(&limiter, &open, started + Duration::from_millis(10_001)).await;
        assert_eq!(taken, 1_005);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crawling_channel_holds_one_permit_not_all() {
        let started = Instant::now();
        let open = Arc::new(Semaphore::new(2));
        // Fifty jobs queue on a channel slowed to one send per 100 s...
        let slow = paced(0.01, 1);
        let mut queued = Vec::new();
        for _ in 0..50 {
            let (slow, open) = (slow.clone(), open.clone());
            queued.push(tokio::spawn(async move {
                let (permit, _) = slow.turn("+1", &open).await;
                drop(permit);
            }));
        }
        tokio::task::yield_now().await;
        // ...while a healthy channel sharing the permits keeps its own rate.
        let fast = paced(100.0, 1);
        let taken = turns_until(&fast, &open, started + Duration::from_millis(1_001)).await;
        assert_eq!(taken, 101, "the slow channel took the shared permits");
        let done = queued.iter().filter(|t| t.is_finished()).count();
        assert_eq!(done, 1, "the slow channel sent beyond its budget");
        for t in queued {
            t.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recipient_pacing_holds_back_only_that_recipient() {
        let interval = Duration::from_secs(6);
        let limiter = Arc::new(
            Limiter::with_pace(1_000.0, 10, Paused::start())
                .with_recipient_interval(Some(interval)),
        );
        let open = Arc::new(Semaphore::new(10));
        let started = Instant::now();
        let mut sends = Vec::new();
        for phone in ["+1", "+1", "+2", "+1"] {
            let (limiter, open) = (limiter.clone(), open.clone());
            sends.push(tokio::spawn(async move {
                drop(limiter.turn(phone, &open).await);
                started.elapsed()
            }));
        }
        let mut at = Vec::new();
        for send in sends {
            at.push(send.await.map(|d| d.as_secs()).unwrap_or(u64::MAX));
        }
        at.sort_unstable();
        // +2 and the first +1 at once; the other two +1 one interval apart.
        assert_eq!(at, [0, 0, 6, 12]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipient_interval_counts_from_the_send_not_the_wait() {
        // The channel's budget is spent: the next slot is 0.5 s away.
        let limiter = Arc::new(
            Limiter::with_pace(2.0, 1, Paused::start())
                .with_recipient_interval(Some(Duration::from_secs(1))),
        );
        let open = Arc::new(Semaphore::new(10));
        drop(limiter.turn("+9", &open).await);
        let started = Instant::now();
        let mut sends = Vec::new();
        for _ in 0..2 {
            let (limiter, open) = (limiter.clone(), open.clone());
            sends.push(tokio::spawn(async move {
                drop(limiter.turn("+1", &open).await);
                started.elapsed().as_millis()
            }));
            tokio::task::yield_now().await;
        }
        let mut at = Vec::new();
        for send in sends {
            at.push(send.await.unwrap_or(u128::MAX));
        }
        at.sort_unstable();
        // The first +1 goes at its slot (0.5 s); the second a whole interval
        // after that send, not after the first one began to wait.
        assert_eq!(at, [500, 1_500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_reaches_a_job_already_waiting() {
        let limiter = paced(0.001, 1);
        let open = Arc::new(Semaphore::new(1));
        drop(limiter.turn("+1", &open).await);
        let started = Instant::now();
        let waiting = {
            let (limiter, open) = (limiter.clone(), open.clone());
            tokio::spawn(async move { drop(limiter.turn("+1", &open).await) })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiting.is_finished(),
            "sent before its slot at 1 per 1,000 s"
        );
        limiter.set_rate(10.0, 1);
        // The new limiter starts empty: the job goes one new period later.
        let _ = waiting.await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(5_100) && waited < Duration::from_millis(5_200),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_starts_the_budget_after_the_handover() {
        let limiter = paced(10.0, 5);
        let open = Semaphore::new(1);
        let start = Instant::now();
        limiter.take_over(10.0, 5);
        // Empty from the handover's end: the first slot one period after it.
        let (_, waited) = limiter.turn("+1", &open).await;
        assert_eq!(waited, HANDOVER + Duration::from_millis(100));
        // From then on the plain rate, with no burst saved up by the handover.
        let taken = turns_until(&limiter, &open, start + Duration::from_secs(3)).await;
        // Slots at 0.3 s, 0.4 s, … 3.0 s (the window's end included, as in
        // `turns_keep_rate_times_window_plus_burst`).
        assert_eq!(
            taken, 28,
            "turns after the first within 3 s of the takeover"
        );
        // A rate change later is not undone by the takeover's renewal.
        limiter.set_rate(1000.0, 5);
        let (_, waited) = limiter.turn("+1", &open).await;
        assert!(waited <= Duration::from_millis(1), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_set_during_the_handover_is_the_one_that_starts() {
        let limiter = paced(0.001, 1);
        let open = Semaphore::new(1);
        limiter.take_over(0.001, 1);
        // An operator's new rate arrives while the handover holds the channel.
        limiter.set_rate(1_000.0, 1);
        let (_, waited) = limiter.turn("+1", &open).await;
        // Renewed at the handover's end with the new rate (first slot 1 ms
        // later), not with the takeover's 1 per 1,000 s.
        assert_eq!(waited, HANDOVER + Duration::from_millis(1));
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
