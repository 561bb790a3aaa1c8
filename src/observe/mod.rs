//! What SREs see, and what they must never see: [`emit`] (one call per
//! thing that happens: its log line and its metric), [`health`] (readiness,
//! set by the stages that know), [`metrics`] (one registry,
//! methods named for what happened), [`logging`] (text or JSON, escaped),
//! [`trace`] (OpenTelemetry spans and context), and [`privacy`] (what a
//! phone number looks like and how it is masked, everywhere).

pub(crate) mod emit;
pub(crate) mod health;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod privacy;
pub(crate) mod trace;
