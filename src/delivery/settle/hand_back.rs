//! Handing a delivery back to its queue, and waiting after refused
//! publishes: the backoff, and the recovery that ends it early.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lapin::{message::Delivery, options::BasicAckOptions};
use tracing::warn;

use super::{Settler, nack};
use crate::observe::emit::{Emit, SettleFailed};
use crate::{
    broker::{PublishError, headers},
    delivery::settlement::backoff,
};

impl Settler {
    /// A publish was refused: declare the topology again, wait (longer each
    /// time in a row, shorter when stopping), then return the delivery.
    pub(super) async fn hand_back_later(
        &self,
        delivery: &Delivery,
        channel: &str,
        queue: &str,
        received: Option<Instant>,
        generation: u64,
        e: &PublishError,
    ) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        let wait = backoff(n);
        let failed = SettleFailed {
            channel,
            kind: e.kind(),
            error: e,
            retry_in: wait,
        };
        failed.emit(&self.metrics);
        self.unsettled(channel, received);
        let mut recovery = self.recovery.subscribe();
        tokio::select! {
            biased;
            () = self.stop.cancelled() => {}
            _ = recovery.wait_for(|g| *g != generation) => {}
            () = tokio::time::sleep(wait) => {}
        }
        self.hand_back(delivery, queue).await;
    }

    /// Returns a delivery to `queue` (the one it came from) without
    /// spending its delivery budget, the cheapest way the broker allows.
    /// RabbitMQ 4.3 no longer counts a nack with requeue: a plain nack.
    /// Before (3.10 to 4.2) a quorum queue counts every nack toward
    /// `x-delivery-limit`, so a job handed back by pauses, restarts or
    /// give-backs would become `poison` without ever being tried. There a
    /// copy ([`headers::returned_copy`]) is published to the queue with a
    /// confirm, and only then is the delivery acked. When that cannot be
    /// done (publishing blocked, the queue gone, no confirm) the delivery is
    /// nacked as before: nothing is lost, it only counts.
    pub(crate) async fn hand_back(&self, delivery: &Delivery, queue: &str) {
        if self.publisher.server().nack_is_free() || !self.health.is_open() {
            return nack(delivery).await;
        }
        let copy = headers::returned_copy(&delivery.properties);
        match self
            .publisher
            .publish("", queue, &delivery.data, copy, false)
            .await
        {
            Ok(_) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // Its copy is queued and the broker redelivers the
                    // original too: the dedup memory keeps it from being
                    // sent twice by this replica.
                    warn!(error = %e, "ack after handing a job back failed; it may come twice");
                }
            }
            Err(e) => {
                warn!(error = %e, "could not queue the job's copy; returning it with a nack");
                nack(delivery).await;
            }
        }
    }

    /// Publishing works again: jobs that failed before now go back at once.
    pub(crate) fn recovered(&self) {
        self.recovery.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(super) async fn wait(&self, wait: Duration) {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
