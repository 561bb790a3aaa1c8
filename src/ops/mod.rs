//! What operators drive: [`control`] (pause / resume / rate on every
//! replica, through the control stream), the [`overview`] of every channel,
//! the dead-letter tools on an exact snapshot ([`dlq`]), and the browser
//! [`console`] (its own process and port).

pub mod console;
pub(crate) mod control;
pub(crate) mod dlq;
pub(crate) mod overview;
pub(crate) mod replies;
