//! octopods-worker: consumes WhatsApp interactive-message send jobs from
//! RabbitMQ, rate-limits each channel, calls Octopods, and settles every job
//! as a `sent` event or a dead letter — acking only after the broker has
//! confirmed everything the job caused.
//!
//! # Layout
//!
//! The pipeline, in order:
//! - [`consume`]: consumes a channel queue; runs each delivery through the stages.
//! - [`job`]: parses and validates a job (valid by construction afterwards).
//! - [`limit`]: the channel's rate limit (`governor`), paused by 429s.
//! - [`send`]: one job's attempts, with backoff and deadlines.
//! - [`octopods`]: the HTTP client for the interactive endpoint.
//! - [`classify`]: the one decision of sent / retry / dead-letter.
//! - [`settle`]: publishes events and dead letters with confirms, then acks.
//!
//! Around it:
//! - [`worker`]: lifecycle — connect, consume, reconnect, graceful shutdown.
//! - [`broker`]: connection, topology, confirmed publishing, headers.
//! - [`config`]: the TOML file and the API keys.
//! - [`outcome`]: the closed vocabularies (`Reason`, `RetryCause`, `Outcome`).
//! - [`events`]: result-event JSON.
//! - [`dedup`]: the recent-`job_id` memory that prevents re-sends.
//! - [`metrics`], [`http`], [`telemetry`]: what SREs see.
//! - [`dlq`]: dead-letter operations (stats, list, export, replay, purge).
//! - [`sandbox`]: the stand-in Octopods server.
//! - [`enqueue`], [`results`], [`loadtest`], [`cli`]: the command line.

pub mod broker;
pub mod classify;
pub mod cli;
pub mod config;
pub mod consume;
pub mod dedup;
pub mod dlq;
pub mod enqueue;
pub mod events;
pub mod http;
pub mod job;
pub mod limit;
pub mod loadtest;
pub mod metrics;
pub mod octopods;
pub mod outcome;
pub mod results;
pub mod sandbox;
pub mod send;
pub mod settle;
pub mod telemetry;
pub mod worker;
