//! `spawn_worker()`: a worker on its own topology prefix, HTTP port 0 and its
//! own sandbox, plus typed helpers to publish jobs and read events, dead
//! letters and metrics through the broker and HTTP, as a user would.
//!
//! - [`broker`]: the test broker, dead letters as read from a queue, closing
//!   the worker's connection.
//! - [`jobs`]: sample jobs and the payload Octopods must receive for them.
//! - [`binary`]: the real binary, for signals and crashes.
//! - [`proxy`]: a relay to the broker that freezes and severs.

mod binary;
mod broker;
pub mod browser;
mod jobs;
pub mod otlp;
mod proxy;
mod raw_amqp;

pub use binary::*;
pub use broker::*;
pub use jobs::*;
pub use proxy::*;
pub use raw_amqp::*;

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use octopods_worker::{
    broker::topology,
    config::Config,
    sandbox::{Recorded, Sandbox, SandboxConfig, Script},
    worker::Worker,
};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Polls `f` until it yields `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts that in every window of `window` the sandbox saw at most
/// `rate × window + burst` requests for the channel (docs/contract.md §8).
pub fn assert_budget(at_ms: &[u64], rate: f64, burst: u32, window: Duration) {
    let w = window.as_millis() as u64;
    let limit = (rate * window.as_secs_f64()).floor() as usize + burst as usize;
    for (i, start) in at_ms.iter().enumerate() {
        let n = at_ms[i..].iter().take_while(|t| **t < start + w).count();
        assert!(
            n <= limit,
            "{n} requests within {window:?} from request {i}; budget allows {limit}"
        );
    }
}

/// The sandbox's arrival times (ms) of the requests made with `key`.
pub fn requests_with_key(app: &TestApp, key: &str) -> Vec<u64> {
    app.requests()
        .into_iter()
        .filter(|r| r.auth.as_deref() == Some(key))
        .map(|r| r.at_ms)
        .collect()
}

/// Requests per second from the first to the last of `at_ms`.
pub fn achieved_rate(at_ms: &[u64]) -> f64 {
    match (at_ms.first(), at_ms.last()) {
        (Some(a), Some(b)) if b > a => (at_ms.len() - 1) as f64 / ((b - a) as f64 / 1000.0),
        _ => 0.0,
    }
}

pub fn unique_prefix(test: &str) -> String {
    format!(
        "t-{test}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// One channel of a test worker.
#[derive(Clone)]
pub struct TestChannel {
    pub name: String,
    pub key: String,
    pub rate: f64,
    pub burst: u32,
    pub provider: &'static str,
    /// `recipient_interval`, e.g. `"1s"`.
    pub recipient_interval: Option<&'static str>,
    /// `track_status`: poll sent messages' status.
    pub track_status: bool,
    /// A `[channels.replies]` table's body (docs/contract.md §15).
    pub replies: Option<String>,
}

impl TestChannel {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            key: format!("key-{name}-s3cret"),
            rate: 1000.0,
            burst: 100,
            provider: "cloud_api",
            recipient_interval: None,
            track_status: false,
            replies: None,
        }
    }
}

/// The retry settings of most tests: two immediate attempts, then a short
/// durable delay, so both retry levels run in every retry test.
pub const TEST_RETRY: &str = "[retry]\nmax_attempts = 4\nimmediate_attempts = 2\ndelays = [\"300ms\"]\n\
                              initial_interval = \"20ms\"\nmax_interval = \"200ms\"\n";

pub struct Options {
    pub channels: Vec<TestChannel>,
    /// Extra TOML appended to the generated config (e.g. a `[retry]` table).
    pub extra_toml: String,
    /// Keys the sandbox accepts; empty means any.
    pub sandbox_keys: Vec<String>,
    pub sandbox_latency: Duration,
    /// The sandbox's own per-key limit (429 past it), like Octopods'.
    pub sandbox_rate_limit: Option<u32>,
    /// `broker.delivery_limit` (the config's default when `None`).
    pub delivery_limit: Option<u32>,
    /// `worker.spread_window`: 0 in most tests, so consumers subscribe at once.
    pub spread_window: Duration,
    /// Runs with each parsed job's id inside the worker's pipeline (may panic).
    pub fault: Option<fn(&str)>,
    /// `octopods.max_concurrent_requests` (the config's default when `None`).
    pub max_concurrent_requests: Option<usize>,
    /// When the sandbox reports a sent message DELIVERED, then READ.
    pub sandbox_status_after: (Duration, Duration),
    /// The worker's broker URL (the test broker's when `None`).
    pub broker_url: Option<String>,
    /// Query parameters for the broker URL (e.g. `channel_max=64`).
    pub broker_query: Option<String>,
    /// `worker.channel_keys_dir` set (channels can be added at run time;
    /// their key files go in [`TestApp::runtime_keys`]).
    pub runtime_channels: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            channels: vec![TestChannel::new("store-eu")],
            extra_toml: TEST_RETRY.into(),
            sandbox_keys: Vec::new(),
            sandbox_latency: Duration::ZERO,
            sandbox_rate_limit: None,
            delivery_limit: None,
            spread_window: Duration::ZERO,
            fault: None,
            max_concurrent_requests: None,
            sandbox_status_after: (Duration::from_millis(300), Duration::from_millis(600)),
            broker_url: None,
            broker_query: None,
            runtime_channels: false,
        }
    }
}

/// Publishes on `ch` (in confirm mode) and waits for the broker's ack.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(
        confirm.is_ack(),
        "the broker nacked a publish to {exchange:?} / {routing_key:?}"
    );
}

pub struct TestApp {
    pub prefix: String,
    pub config: Config,
    pub config_path: std::path::PathBuf,
    pub sandbox: Sandbox,
    pub http: SocketAddr,
    /// The reply webhooks' address, with a reply-tracking channel.
    pub replies: Option<SocketAddr>,
    pub channels: Vec<TestChannel>,
    fault: Option<fn(&str)>,
    conn: Connection,
    ch: Channel,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set by [`TestApp::shutdown`]; until then dropping the app (a test
    /// that failed) removes its topology anyway.
    cleaned: bool,
    _keys: tempfile::TempDir,
    /// Channels a test added at run time: their queues go at cleanup.
    pub added: Vec<String>,
}

impl Drop for TestApp {
    /// A test that fails never reaches `shutdown`: its queues and exchanges
    /// are deleted here, on a thread and a connection of their own (the
    /// test's runtime may be unwinding).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.shutdown.cancel();
        let config = self.config.clone();
        let added = self.added_queues();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
                    .await
                    .ok()?;
                drop(topology::delete(&conn, &config).await);
                drop(topology::delete_queues(&conn, added.iter().map(String::as_str)).await);
                drop(conn.close(200, "OK".into()).await);
                Some(())
            })
        });
        drop(cleanup.join());
    }
}

pub async fn spawn_worker(test: &str) -> TestApp {
    spawn_with(test, Options::default()).await
}

pub fn config_text(
    prefix: &str,
    sandbox_url: &str,
    opts: &Options,
    keys: &std::path::Path,
) -> String {
    let mut text = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\nprefetch = 32\n{}\n\
         [octopods]\nbase_url = \"{sandbox_url}\"\ntimeout = \"2s\"\n{}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n[worker]\ngrace_period = \"5s\"\nspread_window = \"{}ms\"\n{}\n{}\n",
        {
            let url = opts.broker_url.clone().unwrap_or_else(amqp_url);
            match &opts.broker_query {
                None => url,
                Some(q) if url.contains('?') => format!("{url}&{q}"),
                Some(q) => format!("{url}?{q}"),
            }
        },
        opts.delivery_limit
            .map(|n| format!("delivery_limit = {n}\n"))
            .unwrap_or_default(),
        opts.max_concurrent_requests
            .map(|n| format!("max_concurrent_requests = {n}\n"))
            .unwrap_or_default(),
        opts.spread_window.as_millis(),
        if opts.runtime_channels {
            let dir = keys.join("runtime");
            std::fs::create_dir_all(&dir).expect("runtime keys dir");
            format!("channel_keys_dir = \"{}\"\n", dir.display())
        } else {
            String::new()
        },
        opts.extra_toml
    );
    for c in &opts.channels {
        let key_file = keys.join(&c.name);
        std::fs::write(&key_file, &c.key).expect("write key file");
        text.push_str(&format!(
            "[[channels]]\nname = \"{}\"\napi_key_file = \"{}\"\nprovider = \"{}\"\nrate_per_second = {}\nburst = {}\n\n",
            c.name,
            key_file.display(),
            c.provider,
            c.rate,
            c.burst
        ));
        if let Some(i) = c.recipient_interval {
            text.push_str(&format!("recipient_interval = \"{i}\"\n\n"));
        }
        if c.track_status {
            text.push_str("track_status = true\n\n");
        }
        if let Some(r) = &c.replies {
            text.push_str(&format!("[channels.replies]\n{r}\n\n"));
        }
    }
    text
}

pub async fn spawn_with(test: &str, opts: Options) -> TestApp {
    let prefix = unique_prefix(test);
    let sandbox = Sandbox::start(SandboxConfig {
        latency: opts.sandbox_latency,
        api_keys: opts.sandbox_keys.clone(),
        rate_limit: opts.sandbox_rate_limit,
        delivered_after: opts.sandbox_status_after.0,
        read_after: opts.sandbox_status_after.1,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts");
    let keys = tempfile::tempdir().expect("tempdir");
    let text = config_text(&prefix, &sandbox.url(), &opts, keys.path());
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let config_path = keys.path().join("worker.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let conn = broker().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut app = TestApp {
        prefix,
        config,
        config_path,
        sandbox,
        http: "127.0.0.1:0".parse().expect("address"),
        replies: None,
        channels: opts.channels,
        fault: opts.fault,
        conn,
        ch,
        shutdown: CancellationToken::new(),
        handle: None,
        cleaned: false,
        _keys: keys,
        added: Vec::new(),
    };
    app.start_worker().await;
    app
}

impl TestApp {
    /// Writes the config file (and `config`) anew from `opts`, with this
    /// test's prefix, sandbox and key directory: an operator's edit before
    /// the replicas restart.
    pub fn rewrite_config(&mut self, opts: &Options) {
        let text = config_text(&self.prefix, &self.sandbox.url(), opts, self._keys.path());
        self.config =
            Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        std::fs::write(&self.config_path, &text).expect("write config");
    }

    /// Where `channel add --key-file` key files go (with `runtime_channels`).
    pub fn runtime_keys(&self) -> std::path::PathBuf {
        self._keys.path().join("runtime")
    }

    fn added_queues(&self) -> Vec<String> {
        self.added
            .iter()
            .map(|n| self.queue(&format!("jobs.{n}")))
            .collect()
    }

    /// Starts (or restarts) the in-process worker and waits until it is ready.
    pub async fn start_worker(&mut self) {
        assert!(self.handle.is_none(), "the worker is already running");
        let mut worker = Worker::build(self.config.clone())
            .await
            .expect("worker builds");
        if let Some(hook) = self.fault {
            worker.inject_fault(hook);
        }
        self.http = worker.http_addr();
        self.replies = worker.replies_addr();
        self.shutdown = CancellationToken::new();
        self.handle = Some(tokio::spawn(worker.run(self.shutdown.clone())));
        self.wait_ready().await;
    }

    /// Runs the real binary with this test's config appended. Awaited, not
    /// blocking: the test's runtime also runs the sandbox, the in-process
    /// worker and any in-test collector, and a blocked runtime stalls them
    /// (a trace export timed out against a collector frozen while a `dlq`
    /// command ran, and its spans were gone).
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .await
            .expect("run the binary")
    }

    /// Publishes a message straight to `<prefix>.<exchange>`.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        self.publish_raw(&self.queue(exchange), routing_key, body, props)
            .await;
    }

    /// Publishes a message to an exchange named in full (`""`: the default
    /// exchange, routing key = queue name) and waits for the broker's
    /// confirm: the one publish every helper goes through.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        publish_confirmed(&self.ch, exchange, routing_key, body, props).await;
    }

    /// Appends raw bytes to the control stream `<prefix>.control`, as anyone
    /// allowed to write there could, bypassing the CLI's checks.
    pub async fn append_control(&self, body: &[u8]) {
        let props = BasicProperties::default().with_delivery_mode(2);
        self.publish_raw("", &self.queue("control"), body, props)
            .await;
    }

    /// Every message in `<prefix>.<suffix>`, left in place.
    pub async fn peek_all(&self, suffix: &str) -> Vec<DeadLetter> {
        self.take_all(suffix, false).await
    }

    /// Every message in `<prefix>.<suffix>`, taken off the queue.
    pub async fn drain(&self, suffix: &str) -> Vec<DeadLetter> {
        self.take_all(suffix, true).await
    }

    /// Reads as many messages as the queue holds with a consumer (quorum
    /// queues with a single active consumer refuse `basic.get`), then acks
    /// them (`take`) or gives them all back.
    async fn take_all(&self, suffix: &str, take: bool) -> Vec<DeadLetter> {
        use futures_util::StreamExt;
        let n = self.depth(suffix).await as usize;
        let ch = self.conn.create_channel().await.expect("channel");
        let q = self.queue(suffix);
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut all = Vec::with_capacity(n);
        while all.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .unwrap_or_else(|_| panic!("{q}: expected {n} messages, got {}", all.len()));
            let d = next.expect("consumer open").expect("delivery");
            if take {
                d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            }
            all.push(DeadLetter {
                routing_key: d.routing_key.to_string(),
                body: d.data,
                properties: d.properties,
            });
        }
        drop(ch.close(200, "OK".into()).await);
        all
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.http);
        eventually(
            Duration::from_secs(15),
            "the worker to be ready (connected and consuming)",
            || async {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    pub fn queue(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Publishes raw bytes to `<prefix>.jobs` with the channel as routing key.
    pub async fn publish_bytes(&self, channel: &str, body: &[u8], props: BasicProperties) {
        let props = props
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        self.publish_to("jobs", channel, body, props).await;
    }

    /// Publishes many jobs to `channel`, waiting for all confirms at the end.
    pub async fn publish_many(&self, channel: &str, jobs: impl IntoIterator<Item = Value>) {
        let bodies = jobs
            .into_iter()
            .map(|job| serde_json::to_vec(&job).expect("json"));
        self.publish_many_raw(&self.queue("jobs"), channel, bodies)
            .await;
    }

    /// Publishes many bodies to an exchange named in full (`""`: the default
    /// exchange), waiting for all confirms at the end.
    pub async fn publish_many_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        bodies: impl IntoIterator<Item = Vec<u8>>,
    ) {
        for body in bodies {
            drop(
                self.ch
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish"),
            );
        }
        let returned = self.ch.wait_for_confirms().await.expect("confirms");
        assert!(returned.is_empty());
    }

    pub async fn publish_job(&self, job: &Value) -> Vec<u8> {
        let body = serde_json::to_vec(job).expect("json");
        self.publish_bytes(&self.channels[0].name, &body, BasicProperties::default())
            .await;
        body
    }

    async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
    }

    /// The next result event (taken off `<prefix>.results`), with its AMQP properties.
    pub async fn next_event_with_props(&self) -> (Value, BasicProperties, String) {
        let q = self.queue("results");
        let msg = eventually(Duration::from_secs(15), "a result event", || self.get(&q)).await;
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        let v = serde_json::from_slice(&msg.delivery.data).expect("event is JSON");
        (
            v,
            msg.delivery.properties,
            msg.delivery.routing_key.to_string(),
        )
    }

    /// The next result event if one is waiting.
    pub async fn try_next_event(&self) -> Option<Value> {
        let msg = self.get(&self.queue("results")).await?;
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(serde_json::from_slice(&msg.delivery.data).expect("event is JSON"))
    }

    pub async fn next_event(&self) -> Value {
        self.next_event_with_props().await.0
    }

    /// The next dead letter (taken off `<prefix>.dead`).
    pub async fn next_dead_letter(&self) -> DeadLetter {
        let q = self.queue("dead");
        let msg = eventually(Duration::from_secs(15), "a dead letter", || self.get(&q)).await;
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        DeadLetter {
            routing_key: msg.delivery.routing_key.to_string(),
            body: msg.delivery.data,
            properties: msg.delivery.properties,
        }
    }

    /// Messages waiting in `<prefix>.<suffix>`, without taking them.
    pub async fn depth(&self, suffix: &str) -> u32 {
        queue_depth(&self.ch, &self.queue(suffix)).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.sandbox.requests()
    }

    pub fn requests_for(&self, phone: &str) -> Vec<Recorded> {
        self.sandbox.requests_for(phone)
    }

    pub fn script(&self, script: Script) {
        self.sandbox.script(script);
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Reads one sample's value from `/metrics`, e.g.
    /// `octopods_jobs_completed_total{channel="a",outcome="sent"}`.
    /// The value of one series; a series that is not exported fails the
    /// test (every known label is exported at zero from the start).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    pub fn clear_scripts(&self) {
        self.sandbox.clear_scripts();
    }

    /// Stops the worker as SIGTERM would and waits for it to drain and exit.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("worker task").expect("worker exits cleanly");
        }
    }

    /// Stops the worker and deletes the test's topology (every queue and
    /// exchange `topology::declare` made for its config).
    pub async fn shutdown(mut self) {
        self.stop_worker().await;
        topology::delete(&self.conn, &self.config)
            .await
            .expect("delete the test topology");
        topology::delete_queues(&self.conn, self.added_queues().iter().map(String::as_str))
            .await
            .expect("delete the added channels' queues");
        self.cleaned = true;
        drop(self.conn.close(200, "OK".into()).await);
    }
}
