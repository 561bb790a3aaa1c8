//! The closed vocabularies every stage shares: why a job was dead-lettered
//! ([`Reason`]), why an attempt is retried ([`RetryCause`]), and what an attempt
//! came to ([`Outcome`]). The DLQ header, the event JSON and the metric label all
//! use `as_str()`, so they share one spelling and metric cardinality stays bounded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a job ended in the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Validation,
    Malformed,
    Window,
    Expired,
    Unauthorized,
    Forbidden,
    Rejected,
    RetriesExhausted,
    /// Dead-lettered by RabbitMQ itself (delivery limit); read from `x-death`.
    Poison,
    /// The worker itself failed on this job (a panic) several deliveries in a row.
    Internal,
    /// The fallback template cannot be sent (unknown, disabled, variables or
    /// header wrong; docs/contract.md §11).
    Template,
    /// The customer stopped marketing messages (Meta 131050).
    OptedOut,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Validation,
        Reason::Malformed,
        Reason::Window,
        Reason::Expired,
        Reason::Unauthorized,
        Reason::Forbidden,
        Reason::Rejected,
        Reason::RetriesExhausted,
        Reason::Poison,
        Reason::Internal,
        Reason::Template,
        Reason::OptedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Validation => "validation",
            Reason::Malformed => "malformed",
            Reason::Window => "window",
            Reason::Expired => "expired",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::Rejected => "rejected",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::Poison => "poison",
            Reason::Internal => "internal",
            Reason::Template => "template",
            Reason::OptedOut => "opted_out",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCause {
    /// HTTP 429 from Octopods.
    RateLimited,
    /// Meta-side throttling surfaced through Octopods (131056, 130429, 131048).
    Throttled,
    /// HTTP 408 or our own request timeout.
    Timeout,
    /// HTTP 5xx.
    ServerError,
    /// Could not connect or the connection broke.
    Connect,
    /// An answer we could not read (bad JSON, 2xx without `message_id`).
    Unreadable,
    /// The template is paused (Meta 132015) or the customer's marketing cap
    /// is reached (131049): retried hours later (`retry.paused_delay`).
    Paused,
}

impl RetryCause {
    pub const ALL: [RetryCause; 7] = [
        RetryCause::RateLimited,
        RetryCause::Throttled,
        RetryCause::Timeout,
        RetryCause::ServerError,
        RetryCause::Connect,
        RetryCause::Unreadable,
        RetryCause::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::RateLimited => "rate_limited",
            RetryCause::Throttled => "throttled",
            RetryCause::Timeout => "timeout",
            RetryCause::ServerError => "server_error",
            RetryCause::Connect => "connect",
            RetryCause::Unreadable => "unreadable",
            RetryCause::Paused => "paused",
        }
    }
}

/// The kind of a result event: its `event` field and the first word of its
/// routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Sent,
    DeadLettered,
    /// Delivery status (docs/contract.md §12).
    Delivered,
    Read,
    Failed,
    StatusUnknown,
    /// The customer's answer (docs/contract.md §15).
    Replied,
    ReplyAmbiguous,
    ReplyUnmatched,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Sent,
        EventKind::DeadLettered,
        EventKind::Delivered,
        EventKind::Read,
        EventKind::Failed,
        EventKind::StatusUnknown,
        EventKind::Replied,
        EventKind::ReplyAmbiguous,
        EventKind::ReplyUnmatched,
    ];
    /// How a job ends (`octopods_jobs_completed_total{outcome}`).
    pub const OUTCOMES: [EventKind; 2] = [EventKind::Sent, EventKind::DeadLettered];
    /// What status tracking reports.
    pub const STATUSES: [EventKind; 4] = [
        EventKind::Delivered,
        EventKind::Read,
        EventKind::Failed,
        EventKind::StatusUnknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sent => "sent",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Delivered => "delivered",
            EventKind::Read => "read",
            EventKind::Failed => "failed",
            EventKind::StatusUnknown => "status_unknown",
            EventKind::Replied => "replied",
            EventKind::ReplyAmbiguous => "reply_ambiguous",
            EventKind::ReplyUnmatched => "reply_unmatched",
        }
    }
}

/// Octopods' own error body: `{request_id, error_code, error}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OctopodsError {
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub error_code: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What went wrong, with what Octopods said about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    /// Human-readable, never containing a secret or a full phone number.
    pub message: String,
    pub http_status: Option<u16>,
    pub octopods_error: Option<OctopodsError>,
}

impl Failure {
    pub fn local(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }
}

/// Octopods' receipt for a queued send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub message_id: String,
    #[serde(default)]
    pub channel_message_id: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub message_status_url: Option<String>,
    #[serde(default)]
    pub phone_number: Option<String>,
}

/// What one attempt came to: the single decision of retry vs dead-letter.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent(Receipt),
    Retry {
        cause: RetryCause,
        /// A floor on the delay before the next attempt (`Retry-After`).
        after: Option<Duration>,
        failure: Failure,
    },
    DeadLetter(Reason, Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_spelling_round_trips() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
    }
}

/// Which message a send uses: the interactive one, or the fallback template
/// outside the 24-hour window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Interactive,
    Template,
}

impl Via {
    pub const ALL: [Via; 2] = [Via::Interactive, Via::Template];

    pub fn as_str(self) -> &'static str {
        match self {
            Via::Interactive => "interactive",
            Via::Template => "template",
        }
    }
}
