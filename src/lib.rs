//! octopods-worker: consumes WhatsApp interactive-message send jobs from
//! RabbitMQ, rate-limits each channel, calls Octopods, and settles every job
//! as a `sent` event or a dead letter — acking only after the broker has
//! confirmed everything the job caused.
//!
//! # Layout
//!
//! One delivery, top to bottom:
//! - [`consume`]: subscribes to a channel queue; one task per delivery.
//! - [`pipeline`]: what a delivery comes to, as a [`settlement::Settlement`] value.
//! - [`job`]: parses and validates a job (valid by construction afterwards).
//! - [`dedup`]: the recent-`job_id` memory that prevents re-sends.
//! - [`retry`]: one delivery's attempts, backoff, and hand-off to a delay queue.
//! - [`limit`]: the channel's rate limit (`governor`), paused by 429s.
//! - [`octopods`]: the HTTP client for the interactive endpoint.
//! - [`classify`]: every decision of sent / retry / dead-letter.
//! - [`status`]: delivery-status checks of sent messages (a pure decision).
//! - [`settlement`]: the settlement as a whole value, and the pure builders of every message.
//! - [`settle`]: the only acks — confirmed publishes (events, dead letters, delayed retries), then ack.
//!
//! Around it:
//! - [`clock`]: time arithmetic on outside values, checked.
//! - [`channel`]: a channel at run time (key, limiter, override) and what tasks share.
//! - [`worker`]: lifecycle — connect, consume, reconnect, drain, stop.
//! - [`broker`]: connections, topology, confirmed publishing, headers, flow control.
//! - [`config`]: the TOML file and the API keys.
//! - [`control`]: operators' pause / resume / rate commands, on every replica.
//! - [`overview`]: every channel's state and queue depths, as `channel status` and the console show them.
//! - [`dlq`]: the dead-letter tools on an exact snapshot (stats, list, export, replay, purge).
//! - [`console`]: the operators' browser console (its own process and port).
//! - [`outcome`]: the closed vocabularies (`Reason`, `RetryCause`, `EventKind`, `Outcome`).
//! - [`events`]: result-event JSON.
//! - [`privacy`]: what a phone number looks like and how it is masked, everywhere.
//! - [`health`], [`metrics`], [`http`], [`telemetry`]: what SREs see.
//! - [`cli`]: the command line — `run`, `topology`, `dlq` (dead-letter tools),
//!   `enqueue`, `events`, `loadtest`, `sandbox` (runs the stand-in Octopods of the
//!   `octopods-sandbox` crate).

// Input must never panic the worker: no unwrap/expect/panic/indexing outside
// tests (the few deliberate exceptions carry an `allow` with their reason).
#![warn(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod broker;
mod channel;
pub mod classify;
pub mod cli;
mod clock;
pub mod config;
pub mod console;
mod consume;
pub mod control;
mod dedup;
pub mod dlq;
pub mod events;
mod health;
mod http;
pub mod job;
mod limit;
pub mod metrics;
mod octopods;
pub mod outcome;
pub mod overview;
mod pipeline;
pub mod privacy;
mod retry;
mod settle;
mod settlement;
pub mod status;
pub mod telemetry;
pub mod trace;
pub mod worker;

/// The stand-in Octopods (its own crate, `sandbox/`), for tests and the demo.
pub use octopods_sandbox as sandbox;
