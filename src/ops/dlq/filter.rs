//! Which dead-lettered messages an operator means: `--reason` (repeatable),
//! `--channel` (repeatable), `--job-id`, `--older-than`. Empty filters match all.

use std::time::Duration;

use time::OffsetDateTime;

use super::message::{DeadMessage, Why};
use crate::outcome::Reason;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this reason (repeatable): validation, malformed, window, expired,
    /// unauthorized, forbidden, rejected, retries_exhausted, poison, unroutable.
    #[arg(long = "reason", value_parser = parse_reason)]
    pub reasons: Vec<Why>,
    /// Only this channel (repeatable).
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// Only this job.
    #[arg(long)]
    pub job_id: Option<String>,
    /// Only messages that failed longer ago than this, e.g. `1h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only this folded error ([`DeadMessage::error_group`]): one group of the console.
    #[arg(skip)]
    pub error_group: Option<String>,
    /// Only these messages ([`DeadMessage::print`]): a selection of the console.
    #[arg(skip)]
    pub prints: Option<std::collections::BTreeSet<u64>>,
}

fn parse_reason(s: &str) -> Result<Why, String> {
    if s == "unroutable" {
        return Ok(Why::Unroutable);
    }
    Reason::parse(s).map(Why::Dead).ok_or_else(|| {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        format!(
            "unknown reason {s:?}; one of {}, unroutable",
            all.join(", ")
        )
    })
}

impl Filter {
    pub fn matches(&self, m: &DeadMessage, now: OffsetDateTime) -> bool {
        if !self.reasons.is_empty() && !self.reasons.contains(&m.why) {
            return false;
        }
        if !self.channels.is_empty()
            && !m
                .channel
                .as_ref()
                .is_some_and(|c| self.channels.iter().any(|f| f == c))
        {
            return false;
        }
        if let Some(id) = &self.job_id
            && m.job_id.as_ref() != Some(id)
        {
            return false;
        }
        if let Some(prints) = &self.prints
            && !prints.contains(&m.print)
        {
            return false;
        }
        if let Some(group) = &self.error_group
            && m.error_group() != *group
        {
            return false;
        }
        if let Some(age) = self.older_than {
            // A message whose failure time is unknown is not known to be old.
            let Some(at) = m.failed_at else { return false };
            if crate::clock::between(at, now) < age {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::{ops::dlq::message::Why, outcome::Reason};

    fn msg(reason: Reason, channel: &str, job: &str, at: OffsetDateTime) -> DeadMessage {
        DeadMessage {
            job_id: Some(job.into()),
            channel: Some(channel.into()),
            why: Why::Dead(reason),
            error: String::new(),
            attempts: 1,
            failed_at: Some(at),
            replays: 0,
            print: 0,
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-11-24 12:00 UTC);

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&msg(Reason::Window, "a", "j", NOW), NOW));
    }

    #[test]
    fn repeated_reasons_are_alternatives() {
        let f = Filter {
            reasons: vec![Why::Dead(Reason::Window), Why::Dead(Reason::Poison)],
            ..Filter::default()
        };
        assert!(f.matches(&msg(Reason::Window, "a", "j", NOW), NOW));
        assert!(f.matches(&msg(Reason::Poison, "a", "j", NOW), NOW));
        assert!(!f.matches(&msg(Reason::Validation, "a", "j", NOW), NOW));
    }

    #[test]
    fn channel_and_job_id_must_both_match() {
        let f = Filter {
            channels: vec!["a".into(), "b".into()],
            job_id: Some("j1".into()),
            ..Filter::default()
        };
        assert!(f.matches(&msg(Reason::Window, "b", "j1", NOW), NOW));
        assert!(!f.matches(&msg(Reason::Window, "c", "j1", NOW), NOW));
        assert!(!f.matches(&msg(Reason::Window, "a", "j2", NOW), NOW));
    }

    #[test]
    fn older_than_compares_the_failure_time() {
        let f = Filter {
            older_than: Some(Duration::from_secs(3600)),
            ..Filter::default()
        };
        assert!(f.matches(
            &msg(Reason::Window, "a", "j", datetime!(2026-11-24 10:59 UTC)),
            NOW
        ));
        assert!(!f.matches(
            &msg(Reason::Window, "a", "j", datetime!(2026-11-24 11:01 UTC)),
            NOW
        ));
        let mut unknown = msg(Reason::Window, "a", "j", NOW);
        unknown.failed_at = None;
        assert!(!f.matches(&unknown, NOW));
    }

    #[test]
    fn a_group_is_the_folded_error_and_a_selection_the_prints() {
        let mut m = msg(Reason::Validation, "a", "j", NOW);
        m.error = "buttons[0].title: 21 characters, at most 20".into();
        m.print = 7;
        let f = Filter {
            error_group: Some("buttons[N].title: N characters, at most N".into()),
            ..Filter::default()
        };
        assert!(f.matches(&m, NOW));
        m.error = "body: 21 characters, at most 20".into();
        assert!(!f.matches(&m, NOW));
        let only = |p: &[u64]| Filter {
            prints: Some(p.iter().copied().collect()),
            ..Filter::default()
        };
        assert!(only(&[1, 7]).matches(&m, NOW));
        assert!(!only(&[1]).matches(&m, NOW));
        assert!(!only(&[]).matches(&m, NOW));
    }

    #[test]
    fn unknown_reason_is_refused_with_the_list() {
        assert!(
            parse_reason("windw")
                .unwrap_err()
                .contains("one of validation")
        );
        assert!(parse_reason("unroutable").is_ok());
    }
}
