//! Readiness: what `/readyz` and the health gauges report. Ready means
//! connected and consuming every channel queue, the broker not blocking
//! publishes, and the last settlement's publishes confirmed.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::observe::metrics::Metrics;

pub(crate) struct Health {
    consuming: AtomicBool,
    blocked: AtomicBool,
    settle_failing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Health {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            consuming: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            settle_failing: AtomicBool::new(false),
            metrics,
        }
    }

    pub(crate) fn set_consuming(&self, up: bool) {
        self.consuming.store(up, Ordering::SeqCst);
        self.metrics.broker_connected(up);
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        self.metrics.broker_blocked(blocked);
    }

    pub(crate) fn set_settle_failing(&self, failing: bool) {
        if self.settle_failing.swap(failing, Ordering::SeqCst) != failing {
            self.metrics.settle_failing(failing);
        }
    }

    /// `None` when ready, else why not.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if !self.consuming.load(Ordering::SeqCst) {
            Some("not connected to the broker and consuming\n")
        } else if self.blocked.load(Ordering::SeqCst) {
            Some("the broker blocks publishing (resource alarm)\n")
        } else if self.settle_failing.load(Ordering::SeqCst) {
            Some("the broker refuses the worker's publishes (see octopods_settle_failures_total)\n")
        } else {
            None
        }
    }
}
