//! Scripted answers: the faults a test asks for, answered in order, for a
//! number of rounds or for a while, globally or per destination phone.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A scripted answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer normally.
    Success,
    /// 400, code 1.
    MissingField,
    /// 400, code 2.
    WrongShape,
    /// 400, code 7.
    Validation,
    /// 400, code 8: the 24-hour window is closed.
    Window,
    /// 401, code 5.
    Unauthorized,
    /// 400, code 6.
    DeprecatedKey,
    /// 403, code 9.
    NotEnabled,
    /// 429 with `Retry-After` seconds (default 1).
    RateLimited { retry_after: Option<u64> },
    /// 5xx (default 503).
    Outage { status: Option<u16> },
    /// No answer for this long.
    Hang { ms: u64 },
    /// For a status poll: 200 with this status (any case, e.g. `UNKNOWN`,
    /// `FAILED`) and an optional failure reason.
    MessageStatus {
        status: String,
        #[serde(default)]
        failure_reason: Option<String>,
    },
    /// 200, queued, with this `message_id` (any text: an odd answer).
    Accepted { message_id: String },
    /// Any status and Octopods-style error body.
    Status {
        status: u16,
        error_code: Option<i64>,
        error: Option<String>,
    },
}

/// A script: faults answered in order, `repeat` rounds (0 = forever), or
/// cyclically for `for_ms` milliseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Script {
    #[serde(default)]
    pub phone: Option<String>,
    pub faults: Vec<Fault>,
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default)]
    pub for_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Script {
    pub fn for_phone(phone: &str, faults: Vec<Fault>) -> Self {
        Self {
            phone: Some(phone.into()),
            faults,
            repeat: 1,
            for_ms: None,
        }
    }
}

pub(crate) struct Running {
    pub(crate) script: Script,
    pub(crate) next: usize,
    pub(crate) rounds_left: u32,
    pub(crate) until: Option<Instant>,
}

impl Running {
    /// The next fault, and whether the script is used up.
    pub(crate) fn take(&mut self, now: Instant) -> (Option<Fault>, bool) {
        if self.script.faults.is_empty() {
            return (None, true);
        }
        if let Some(until) = self.until {
            if now >= until {
                return (None, true);
            }
            let f = self
                .script
                .faults
                .get(self.next % self.script.faults.len())
                .cloned();
            self.next += 1;
            return (f, false);
        }
        let Some(f) = self.script.faults.get(self.next).cloned() else {
            return (None, true);
        };
        self.next += 1;
        if self.next == self.script.faults.len() {
            self.next = 0;
            if self.rounds_left == 1 {
                return (Some(f), true);
            }
            self.rounds_left = self.rounds_left.saturating_sub(1);
        }
        (Some(f), false)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    fn script(faults: Vec<Fault>, repeat: u32) -> Running {
        Running {
            script: Script {
                phone: None,
                faults,
                repeat,
                for_ms: None,
            },
            next: 0,
            rounds_left: repeat,
            until: None,
        }
    }

    #[test]
    fn script_answers_in_order_then_ends() {
        let mut r = script(vec![Fault::Window, Fault::NotEnabled], 1);
        let now = Instant::now();
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::NotEnabled), true));
    }

    #[test]
    fn script_repeats_rounds() {
        let mut r = script(vec![Fault::Window], 3);
        let now = Instant::now();
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::Window), true));
    }

    #[test]
    fn script_with_repeat_zero_never_ends() {
        let mut r = script(vec![Fault::Window], 0);
        for _ in 0..100 {
            assert!(!r.take(Instant::now()).1);
        }
    }

    #[test]
    fn faults_deserialize_from_json() {
        let s: Script = serde_json::from_value(json!({"phone": "+15551234567",
            "faults": [{"kind": "outage"}, {"kind": "rate_limited", "retry_after": 2}]}))
        .unwrap();
        assert_eq!(
            s.faults[1],
            Fault::RateLimited {
                retry_after: Some(2)
            }
        );
        assert_eq!(s.repeat, 1);
    }
}
