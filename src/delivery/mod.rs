//! One delivery, top to bottom: the [`consumer`] takes it from its channel
//! queue, its [`handler`] runs it: the [`pipeline`] decides what it comes to (parse, dedup,
//! [`attempts`] under the channel's [`limit`]) as a [`settlement`] value,
//! and [`settle`] carries that out — the only acks, nacks and rejects.
//! [`channel`] is a channel at run time and what the tasks share.

pub(crate) mod attempts;
pub(crate) mod channel;
pub(crate) mod consumer;
pub(crate) mod dedup;
pub(crate) mod handler;
pub(crate) mod limit;
pub(crate) mod pipeline;
pub(crate) mod settle;
pub(crate) mod settlement;
