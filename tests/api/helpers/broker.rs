//! The test broker: connecting (or failing with a clear message), dead
//! letters as read from a queue, and closing the worker's connection.

use octopods_worker::broker::headers;

use super::*;

/// The test broker's `rabbitmqctl`: `$RABBITMQCTL` (the 4.x run points it
/// at its chroot's, `scripts/rabbitmqctl4`), else the one on `PATH`.
pub fn rabbitmqctl_path() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to the test broker or fails the test with a clear message.
pub async fn broker() -> Connection {
    match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "RabbitMQ is not reachable at {} ({e}). Start it (`rabbitmq-server -detached`) or set AMQP_URL; \
             these tests need a real broker and never skip.",
            amqp_url()
        ),
    }
}

/// A dead-lettered message as found in `<prefix>.dead`.
pub struct DeadLetter {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl DeadLetter {
    pub fn header(&self, key: &str) -> Option<AMQPValue> {
        self.properties
            .headers()
            .as_ref()?
            .inner()
            .get(key)
            .cloned()
    }

    pub fn text(&self, key: &str) -> Option<String> {
        headers::text(self.properties.headers().as_ref(), key)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        headers::int(self.properties.headers().as_ref(), key)
    }
}

/// Runs `rabbitmqctl -q ARGS` (awaited: the test's runtime keeps running the
/// sandbox and the worker meanwhile), failing the test if it fails.
pub async fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(rabbitmqctl_path())
        .arg("-q")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl must be installed for this test");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Closes the worker's broker connection the way an operator (or a broker
/// restart) would.
pub async fn close_worker_connection(prefix: &str) {
    let out = rabbitmqctl(&["list_connections", "pid", "client_properties"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find(|l| l.contains(&format!("octopods-worker worker prefix={prefix} ")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no worker connection for {prefix} in:\n{text}"));
    rabbitmqctl(&["close_connection", pid, "closed by test"]).await;
}

/// Messages ready in `queue`, read through `ch` without taking them.
pub async fn queue_depth(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{queue}: {e}"))
    .message_count()
}

/// A worker's `/metrics` text, or `None` while it does not answer.
pub async fn metrics_text(addr: &str) -> Option<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// One series' value from the `/metrics` of the worker at `addr`, if served.
pub async fn metric_at(addr: &str, series: &str) -> Option<f64> {
    metrics_text(addr)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Every JSON record of the stream `name` so far, read from its first on a
/// connection of its own: what arrives until 300 ms pass without one.
pub async fn read_stream(name: &str) -> Vec<Value> {
    use futures_util::StreamExt;
    let conn = broker().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(500, lapin::options::BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            name.into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        drop(d.acker.ack(BasicAckOptions::default()).await);
        if let Ok(v) = serde_json::from_slice(&d.data) {
            out.push(v);
        }
    }
    drop(conn.close(200, "OK".into()).await);
    out
}
