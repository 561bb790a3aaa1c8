//! Black-box tests against the real RabbitMQ and the sandbox. Each test runs
//! its own worker on its own topology prefix, so tests run in parallel.

mod alarm;
mod cli;
mod cluster;
mod console;
mod console_guard;
mod control;
mod dlq;
mod dlq_snapshot;
mod faults;
mod helpers;
mod hostile;
mod input;
mod lifecycle;
mod observability;
mod outcomes;
mod replies;
mod roster;
mod scale;
mod status;
mod template;
mod traces;
