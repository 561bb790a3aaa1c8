//! Time arithmetic on values from outside (a config's grace period, a
//! `Retry-After`, a header's timestamp), in forms that cannot panic: `std`'s
//! and `time`'s operators panic on overflow, and with overflow checks on a
//! year-9999 timestamp or a `"1000000y"` duration would take a replica down.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

/// The furthest a deadline is set: far beyond any real wait.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, saturating at a deadline a century away.
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// How long from `earlier` to `later`; zero if `later` is not after it.
pub(crate) fn between(earlier: OffsetDateTime, later: OffsetDateTime) -> Duration {
    let nanos = later
        .unix_timestamp_nanos()
        .checked_sub(earlier.unix_timestamp_nanos())
        .unwrap_or_default();
    if nanos <= 0 {
        return Duration::ZERO;
    }
    // Past 584 years nanoseconds leave u64: count whole seconds instead.
    u64::try_from(nanos).map_or_else(
        |_| {
            let secs = nanos.checked_div(1_000_000_000).unwrap_or_default();
            Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX))
        },
        Duration::from_nanos,
    )
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn spans_at_the_calendar_edges_do_not_panic() {
        let first = datetime!(-9999-01-01 0:00 UTC);
        let last = datetime!(9999-12-31 23:59:59.999_999_999 -23:59);
        // 20,000 years do not fit u64 nanoseconds: counted in seconds.
        assert_eq!(between(last, first), Duration::ZERO);
        assert!(between(first, last) > Duration::from_secs(19_999 * 365 * 24 * 3600));
        assert!(after(Duration::MAX) > Instant::now());
    }
}
