//! octopods-worker: consumes WhatsApp interactive-message send jobs from
//! RabbitMQ, rate-limits each channel, calls Octopods, and settles every job
//! as a `sent` event or a dead letter — acking only after the broker has
//! confirmed everything the job caused.
//!
//! # Layout
//!
//! Folders by layer, lowest first; a module imports only from its own
//! layer or those below. `docs/architecture.md` walks one delivery through
//! them in numbered steps.
//!
//! - [`clock`], [`outcome`], [`events`]: checked time arithmetic, the closed
//!   vocabularies (`Reason`, `RetryCause`, `EventKind`, `Via`), result-event JSON.
//! - [`config`]: the TOML file and the API keys.
//! - [`observe`]: readiness, metrics, logging, traces, and the one privacy rule.
//! - [`job`]: parses and validates a job (valid by construction afterwards).
//! - [`broker`]: connections, topology, confirmed publishing, headers, flow control.
//! - [`octopods`]: the HTTP client, every sent / retry / dead-letter decision
//!   (`classify`), delivery-status checks (`status`).
//! - [`delivery`]: one delivery, top to bottom — consumer → pipeline (a
//!   settlement value out) → settle (the only acks), with attempts, the
//!   channel's rate limit and the recent-`job_id` memory.
//! - [`worker`]: lifecycle — connect, consume, reconnect, drain, stop; its HTTP endpoints.
//! - [`ops`]: what operators drive — runtime control, the overview, the
//!   dead-letter tools, the browser console.
//! - [`cli`]: the command line (`run`, `topology`, `dlq`, `channel`,
//!   `console`, `enqueue`, `events`, `loadtest`, `sandbox`). Beside the
//!   layers, not in `ops`: it starts the worker, and the worker follows
//!   `ops::control`.

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
pub mod cli;
mod clock;
pub mod config;
mod delivery;
mod events;
pub mod job;
mod observe;
pub mod octopods;
pub mod ops;
mod outcome;
mod replies;
pub mod worker;

/// The stand-in Octopods (its own crate, `sandbox/`), for tests and the demo.
pub use octopods_sandbox as sandbox;
