//! Lifecycle: graceful shutdown settles what is in flight.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn shutdown_finishes_and_acks_jobs_in_flight() {
    let mut app = spawn_with(
        "graceful",
        Options {
            sandbox_latency: Duration::from_millis(700),
            ..Options::default()
        },
    )
    .await;
    for i in 0..5 {
        app.publish_job(&button_job(&format!("inflight-{i}"))).await;
    }
    eventually(Duration::from_secs(10), "5 requests in flight", || async {
        (app.requests().len() == 5).then_some(())
    })
    .await;
    app.stop_worker().await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.push(e["job_id"].as_str().unwrap().to_owned());
    }
    sent.sort();
    assert_eq!(
        sent,
        (0..5).map(|i| format!("inflight-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        app.depth("jobs.store-eu").await,
        0,
        "finished jobs must be acked, not redelivered"
    );
    assert_eq!(app.depth("results").await, 0, "exactly one event per job");
    app.shutdown().await;
}

/// Jobs still waiting for their rate slot at shutdown go back to the queue
/// at once: a standby that takes the channel over must not share its budget
/// with a replica that is draining a prefetched backlog.
#[tokio::test]
async fn shutdown_returns_jobs_still_waiting_for_their_rate_slot() {
    const N: usize = 12;
    let mut channel = TestChannel::new("store-eu");
    channel.rate = 2.0;
    channel.burst = 1;
    let mut app = spawn_with(
        "graceful-backlog",
        Options {
            channels: vec![channel],
            ..Options::default()
        },
    )
    .await;
    for i in 0..N {
        app.publish_job(&button_job(&format!("backlog-{i}"))).await;
    }
    eventually(Duration::from_secs(10), "two sends", || async {
        (app.requests().len() >= 2).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    app.stop_worker().await;
    let took = started.elapsed();
    let sent = app.requests().len();
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?}; the backlog at 2/s would take {} s to drain",
        N / 2
    );
    assert!(sent < N, "the whole backlog was sent while stopping");
    for _ in 0..sent {
        assert_eq!(app.next_event().await["event"], "sent");
    }
    eventually(
        Duration::from_secs(5),
        "the unsent jobs back in the queue",
        || async { (app.depth("jobs.store-eu").await as usize == N - sent).then_some(()) },
    )
    .await;
    assert_eq!(
        app.requests().len(),
        sent,
        "no request after the worker stopped"
    );
    app.shutdown().await;
}

/// Graceful restarts of a replica holding a slow backlog hand its waiting
/// jobs back; they keep their delivery budget (RabbitMQ counts each
/// nack-requeue toward `x-delivery-limit`, which 20 restarts would spend).
#[tokio::test]
async fn twenty_restarts_with_a_slow_backlog_spend_no_job() {
    const N: usize = 30;
    let mut eu = TestChannel::new("store-eu");
    eu.rate = 2.0;
    eu.burst = 1;
    let mut app = spawn_with(
        "restart-cycles",
        Options {
            channels: vec![eu],
            // Fewer than the restarts: each nack-requeue would count.
            delivery_limit: Some(10),
            ..Options::default()
        },
    )
    .await;
    app.publish_many("store-eu", (0..N).map(|i| button_job(&format!("rs-{i}"))))
        .await;
    for restart in 0..20 {
        app.stop_worker().await;
        if app.depth("dead").await > 0 {
            let dead = app.next_dead_letter().await;
            panic!(
                "restart {restart}: a dead letter: {:?} {}",
                dead.properties.headers(),
                String::from_utf8_lossy(&dead.body)
            );
        }
        app.start_worker().await;
    }
    let mut sent = std::collections::BTreeMap::new();
    while sent.len() < N {
        let e = app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        *sent
            .entry(e["job_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    let requests = app.requests().len();
    eprintln!("20 restarts: {N} jobs sent with {requests} requests");
    assert_eq!(requests, N, "each job sent exactly once");
    assert_eq!(app.depth("dead").await, 0);
    assert_eq!(app.depth("jobs.store-eu").await, 0);
    app.shutdown().await;
}

/// A broker that stops answering while the worker stops (a hung node, a
/// partition) holds the stop no longer than the grace period and the
/// closes' waits: the consumers' cancels count inside the grace period
/// (with 10,000 channels a loaded broker took 17–27 s to answer them, and a
/// frozen one never does). What the worker held is redelivered, not lost.
#[tokio::test]
async fn a_broker_that_stops_answering_holds_the_stop_no_longer_than_the_grace_period() {
    let proxy = Proxy::start(&amqp_url()).await;
    let mut app = spawn_with(
        "frozen-stop",
        Options {
            broker_url: Some(proxy.url(&amqp_url())),
            // The job is still at its request when the broker freezes
            // (within the test config's 2 s request timeout).
            sandbox_latency: Duration::from_millis(1500),
            ..Options::default()
        },
    )
    .await;
    app.publish_job(&button_job("held")).await;
    eventually(Duration::from_secs(10), "the request in flight", || async {
        (!app.requests().is_empty()).then_some(())
    })
    .await;
    proxy.freeze();
    let grace = app.config.worker.grace_period;
    // Cancels and drain inside the grace period; then the channels and the
    // connections close, each group within one close's wait (2 s).
    let bound = grace + Duration::from_secs(6);
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), app.stop_worker()).await;
    let took = started.elapsed();
    eprintln!("stop with a frozen broker: {took:?} (grace {grace:?})");
    assert!(
        stopped.is_ok(),
        "the stop was still waiting on the frozen broker after 60 s"
    );
    assert!(
        took <= bound,
        "the stop took {took:?}; the bound is {bound:?}"
    );
    // The held job comes back once the broker sees the connection go.
    proxy.sever();
    proxy.thaw();
    app.start_worker().await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "sent", "{e}");
    assert_eq!(e["job_id"], "held", "{e}");
    app.shutdown().await;
}

/// A topology declared by an earlier version: `octopods.dead` a quorum
/// queue without `x-delivery-limit`. On RabbitMQ 4.x the worker's declare
/// (which sets `-1` there) is refused as inequivalent; the worker declares
/// the queue as it is, says what to set, and serves — the refusal closes
/// one AMQP channel, not the session. On 3.x both declares agree.
#[tokio::test]
async fn a_dead_letter_queue_declared_without_a_delivery_limit_is_served_as_it_is() {
    let mut app = spawn_worker("old-dead-queue").await;
    app.stop_worker().await;
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let dead = app.queue("dead");
    ch.queue_delete(dead.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        dead.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum,
    )
    .await
    .unwrap();
    ch.queue_bind(
        dead.as_str().into(),
        dead.as_str().into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();

    app.start_worker().await;
    app.publish_bytes("store-eu", b"{not json", Default::default())
        .await;
    let e = app.next_event().await;
    assert_eq!(e["event"], "dead_lettered", "{e}");
    assert_eq!(app.depth("dead").await, 1);
    drop(conn.close(200, "OK".into()).await);
    app.shutdown().await;
}
