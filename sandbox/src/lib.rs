//! `octopods-sandbox`: a stand-in for the Octopods interactive-message
//! endpoint that answers as `docs/octopods-api.md` documents, plus scripted faults
//! (globally or per destination phone), latency, and a request log.
//!
//! Control surface, for tests and demos:
//! - `POST /_sandbox/script` `{"phone": "+1…"?, "faults": [{"kind": "outage"}, …], "repeat": 1, "for_ms": null}`
//! - `DELETE /_sandbox/script` clears every script;
//! - `GET /_sandbox/requests` lists what was received (with the auth header, for tests).

mod answers;
mod api;
mod config;
pub mod inbox;
mod script;
mod server;
mod state;
pub mod validate;

pub use config::{SandboxConfig, TemplateSpec};
pub use script::{Fault, Script};
pub use server::{Sandbox, constant, run};
pub use state::Recorded;
