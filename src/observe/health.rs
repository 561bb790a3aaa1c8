//! The one owner of the worker's publishing state, and so of readiness:
//! whether it consumes, whether RabbitMQ blocks its publishing connection,
//! whether the last settlement's publishes were refused, and whether sends
//! are held because a `sent` result could not be published. `/readyz` and
//! the health gauges read it; the attempts wait at its gate, which is open
//! only while the worker could report what it sends.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::observe::metrics::Metrics;

pub(crate) struct Health {
    consuming: AtomicBool,
    /// RabbitMQ blocks the publishing connection (a memory or disk alarm).
    broker_blocked: AtomicBool,
    /// The last settlement's publishes were refused (readiness).
    settle_failing: AtomicBool,
    /// A `sent` result could not be published: no request to Octopods
    /// until a publish goes through again.
    sends_held: AtomicBool,
    /// `true` while requests to Octopods wait: blocked, or sends held.
    gate: tokio::sync::watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// Why the last broker session ended, shown while not consuming (a
    /// broker limit says there what to raise).
    last_failure: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            consuming: AtomicBool::new(false),
            broker_blocked: AtomicBool::new(false),
            settle_failing: AtomicBool::new(false),
            sends_held: AtomicBool::new(false),
            last_failure: std::sync::Mutex::new(None),
            gate: tokio::sync::watch::Sender::new(false),
            metrics,
        }
    }

    pub(crate) fn set_consuming(&self, up: bool) {
        self.consuming.store(up, Ordering::SeqCst);
        if up && let Ok(mut f) = self.last_failure.lock() {
            *f = None;
        }
        self.metrics.broker_connected(up);
    }

    /// RabbitMQ blocked (or unblocked) the publishing connection.
    pub(crate) fn broker_blocked(&self, blocked: bool) {
        self.broker_blocked.store(blocked, Ordering::SeqCst);
        self.metrics.broker_blocked(blocked);
        self.update_gate();
    }

    /// The broker refused a settlement's publishes; when they reported a
    /// send, sends are held until a publish goes through.
    pub(crate) fn publish_refused(&self, reported_a_send: bool) {
        self.set_settle_failing(true);
        if reported_a_send {
            self.sends_held.store(true, Ordering::SeqCst);
            self.update_gate();
        }
    }

    /// A settlement's publishes went through.
    pub(crate) fn published(&self) {
        self.set_settle_failing(false);
        self.sends_held.store(false, Ordering::SeqCst);
        self.update_gate();
    }

    /// A new broker session starts clean: what the last one saw died with it.
    pub(crate) fn start_clean(&self) {
        self.broker_blocked(false);
        self.published();
    }

    fn set_settle_failing(&self, failing: bool) {
        if self.settle_failing.swap(failing, Ordering::SeqCst) != failing {
            self.metrics.settle_failing(failing);
        }
    }

    fn update_gate(&self) {
        let closed =
            self.broker_blocked.load(Ordering::SeqCst) || self.sends_held.load(Ordering::SeqCst);
        self.gate
            .send_if_modified(|c| std::mem::replace(c, closed) != closed);
    }

    /// Whether requests to Octopods may go now.
    pub(crate) fn is_open(&self) -> bool {
        !*self.gate.borrow()
    }

    /// Returns once requests to Octopods may go.
    pub(crate) async fn until_open(&self) {
        let mut rx = self.gate.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        drop(rx.wait_for(|closed| !closed).await);
    }

    /// `None` when ready, else why not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if !self.consuming.load(Ordering::SeqCst) {
            let failure = self.last_failure.lock().ok().and_then(|f| f.clone());
            Some(match failure {
                Some(why) => format!("not connected to the broker and consuming: {why}\n"),
                None => "not connected to the broker and consuming\n".into(),
            })
        } else if self.broker_blocked.load(Ordering::SeqCst) {
            Some("the broker blocks publishing (resource alarm)\n".into())
        } else if self.settle_failing.load(Ordering::SeqCst) {
            Some(
                "the broker refuses the worker's publishes (see octopods_settle_failures_total)\n"
                    .into(),
            )
        } else {
            None
        }
    }

    /// A broker session ended with `why` (shown on `/readyz` until one consumes).
    pub(crate) fn session_failed(&self, why: String) {
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(why);
        }
    }
}
