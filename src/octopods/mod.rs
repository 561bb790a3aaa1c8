//! Octopods: the HTTP [`client`], the one place that decides sent / retry /
//! dead-letter from an answer ([`classify`]), and delivery-status checks of
//! sent messages ([`status`]). What Octopods documents: `docs/octopods-api.md`.

pub mod classify;
pub(crate) mod client;
pub(crate) mod status;
