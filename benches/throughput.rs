//! `cargo bench --bench throughput`: on the same broker, against the same
//! constant-answer HTTP server running in its own process
//! (`octopods-worker sandbox --constant`), measures in alternating rounds
//!
//! (a) the ceiling of this machine — a bare lapin loop doing the same broker
//!     work: consume from a quorum queue → one HTTP POST → publish a
//!     persistent result to a quorum queue with a confirm → ack;
//! (b) the worker doing the full job (parse, validate, limit, send, classify,
//!     event with confirm, ack), limits out of the way; the median (b)/(a) of
//!     the rounds is printed last;
//! (c) the worker with sandbox latency 200 ms against
//!     min(sum of budgets, prefetch × channels / 0.2 s);
//! (d) the release binary with 5,000 jobs in flight: peak RSS and CPU per job.
//!
//! `BENCH_WRAP=heaptrack` runs (d)'s worker under that command (a profiler).
//! `BENCH_ONLY=ab` runs (a) and (b) only, `cd` (c) and (d) only, `d` (d) only.
//! `BENCH_JOBS` sets the job count of (a) and (b) (default 30000),
//! `BENCH_ROUNDS` the rounds (default 3), `BENCH_PREFETCH` the prefetch
//! (default 256). Rates are measured in the steady state, from 10 % of the
//! jobs done to all done.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use octopods_worker::{
    broker::{Names, topology},
    config::Config,
    sandbox::{Sandbox, SandboxConfig},
    worker::Worker,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn job(i: usize) -> Value {
    json!({
        "job_id": format!("bench-{i}"),
        "destination_phone": format!("+1555{:07}", i),
        "waba_interactive_message": octopods_worker::job::delivery_confirmation(),
        "metadata": {"order_id": i.to_string()}
    })
}

async fn publish_jobs(ch: &Channel, exchange: &str, routing_keys: &[String], n: usize) -> Res<()> {
    for i in 0..n {
        let body = serde_json::to_vec(&job(i))?;
        let key = &routing_keys[i % routing_keys.len()];
        drop(
            ch.basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
        );
        if i % 1000 == 999 {
            ch.wait_for_confirms().await?;
        }
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

/// (a) The ceiling: the least any worker must do per job.
async fn ceiling(conn: &Connection, sandbox_url: &str, n: usize, prefetch: u16) -> Res<f64> {
    let prefix = format!("bench-ceiling-{}", std::process::id());
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut qargs = FieldTable::default();
    qargs.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    qargs.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let jobs_q = format!("{prefix}.jobs");
    let results_q = format!("{prefix}.results");
    ch.queue_declare(jobs_q.as_str().into(), durable, qargs)
        .await?;
    let mut rargs = FieldTable::default();
    rargs.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(results_q.as_str().into(), durable, rargs)
        .await?;
    // The same routing as the worker's events: a topic exchange bound `#`.
    let results_x = format!("{prefix}.results-x");
    ch.exchange_declare(
        results_x.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        results_q.as_str().into(),
        results_x.as_str().into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    publish_jobs(&ch, "", std::slice::from_ref(&jobs_q), n).await?;

    let http = reqwest::Client::new();
    let url = format!("{sandbox_url}/api/v1/whatsapp/interactive");
    let consume_ch = conn.create_channel().await?;
    consume_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let pub_ch = conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut consumer = consume_ch
        .basic_consume(
            jobs_q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let done = Arc::new(tokio::sync::Semaphore::new(0));
    let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tenth = Arc::new(std::sync::OnceLock::new());
    for _ in 0..n {
        let Some(Ok(d)) = consumer.next().await else {
            break;
        };
        let (http, url, pub_ch, results_x, done) = (
            http.clone(),
            url.clone(),
            pub_ch.clone(),
            results_x.clone(),
            done.clone(),
        );
        let (counted, tenth) = (counted.clone(), tenth.clone());
        tokio::spawn(async move {
            let job: Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let payload = json!({"destination_phone": job["destination_phone"], "waba_interactive_message": job["waba_interactive_message"]});
            let answer: Value = match http
                .post(&url)
                .header("X-Octopods-Auth", "k")
                .json(&payload)
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            // The same event as the worker's, published the same way: persistent,
            // mandatory, to a topic exchange, with a confirm.
            let event = serde_json::to_vec(&json!({"event": "sent", "job_id": job["job_id"],
                "channel": "fast", "message_id": answer["message_id"],
                "channel_message_id": answer["channel_message_id"], "request_id": answer["request_id"],
                "message_status_url": answer["message_status_url"], "phone_number": answer["phone_number"],
                "attempts": 1, "sent_at": "2026-11-25T10:00:00.000Z", "via": "interactive",
                "metadata": job["metadata"]}))
            .unwrap_or_default();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_correlation_id("bench".into());
            if let Ok(confirm) = pub_ch
                .basic_publish(
                    results_x.as_str().into(),
                    "sent.fast".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &event,
                    props,
                )
                .await
            {
                drop(confirm.await);
            }
            drop(d.acker.ack(BasicAckOptions::default()).await);
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n / 10 {
                let _ = tenth.set(Instant::now());
            }
            done.add_permits(1);
        });
    }
    drop(done.acquire_many(u32::try_from(n)?).await?);
    let from = tenth.get().copied().unwrap_or(started);
    let rate = (n - n / 10) as f64 / from.elapsed().as_secs_f64();
    for q in [jobs_q, results_q] {
        drop(
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await,
        );
    }
    drop(
        ch.exchange_delete(results_x.as_str().into(), Default::default())
            .await,
    );
    Ok(rate)
}

fn worker_config(
    prefix: &str,
    sandbox_url: &str,
    key_file: &std::path::Path,
    channels: &[(&str, f64)],
    prefetch: u16,
) -> Res<Config> {
    let mut text = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\nprefetch = {prefetch}\n\
         [octopods]\nbase_url = \"{sandbox_url}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [worker]\nspread_window = \"0s\"\n[results]\ndeclare_queue = true\n",
        amqp_url()
    );
    for (name, rate) in channels {
        text.push_str(&format!(
            "[[channels]]\nname = \"{name}\"\napi_key_file = \"{}\"\nrate_per_second = {rate}\nburst = {}\n",
            key_file.display(),
            (*rate as u32).clamp(1, 100_000)
        ));
    }
    Ok(Config::from_toml(&text)?)
}

/// Runs the in-process worker over `n` pre-published jobs; returns jobs/s.
async fn worker_run(conn: &Connection, config: Config, n: usize) -> Res<f64> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    topology::declare(&ch, &config).await?;
    let names = Names::new(&config.broker.prefix);
    let keys: Vec<String> = config.channels.iter().map(|c| c.name.clone()).collect();
    publish_jobs(&ch, &names.jobs_exchange(), &keys, n).await?;
    let worker = Worker::build(config.clone()).await?;
    let metrics = worker.metrics();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let mut tenth = None;
    loop {
        let text = metrics.render();
        let done: f64 = text
            .lines()
            .filter(|l| l.starts_with("octopods_jobs_completed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if tenth.is_none() && done as usize >= n / 10 {
            tenth = Some((Instant::now(), done as usize));
        }
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The steady state: from 10 % done to all done (connecting and declaring
    // the topology are not throughput).
    let (from, done_then) = tenth.unwrap_or((started, 0));
    let rate = (n - done_then) as f64 / from.elapsed().as_secs_f64();
    stop.cancel();
    drop(handle.await);
    topology::delete(&ch, &config).await?;
    Ok(rate)
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (d) The release binary with 5,000 jobs in flight at once.
async fn memory(
    conn: &Connection,
    key_file: &std::path::Path,
    dir: &std::path::Path,
) -> Res<(u64, f64)> {
    const N: usize = 5000;
    let sandbox = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse()?,
        latency: Duration::from_secs(3),
        api_keys: vec![],
        rate_limit: None,
        templates: Vec::new(),
        delivered_after: Duration::from_millis(300),
        read_after: Duration::from_millis(600),
    })
    .await?;
    let prefix = format!("bench-mem-{}", std::process::id());
    let config = worker_config(
        &prefix,
        &sandbox.url(),
        key_file,
        &[("mem", 100_000.0)],
        5000,
    )?;
    let path = dir.join("mem.toml");
    let text = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\nprefetch = 5000\n[octopods]\nbase_url = \"{}\"\ntimeout = \"20s\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[worker]\nspread_window = \"0s\"\n\
         [[channels]]\nname = \"mem\"\napi_key_file = \"{}\"\nrate_per_second = 100000\nburst = 5000\n",
        amqp_url(),
        sandbox.url(),
        key_file.display()
    );
    std::fs::write(&path, text)?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    topology::declare(&ch, &config).await?;
    let names = Names::new(&prefix);
    publish_jobs(&ch, &names.jobs_exchange(), &["mem".to_owned()], N).await?;
    // BENCH_WRAP runs the worker under a profiler, e.g. `heaptrack`.
    let mut command = match std::env::var("BENCH_WRAP") {
        Ok(wrap) if !wrap.is_empty() => {
            let mut c = std::process::Command::new(wrap);
            c.arg(env!("CARGO_BIN_EXE_octopods-worker"));
            c
        }
        _ => std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker")),
    };
    let mut child = command
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    let started = Instant::now();
    let mut peak_in_flight = 0;
    loop {
        let in_sandbox = sandbox.requests().len();
        peak_in_flight = peak_in_flight.max(in_sandbox);
        let q = ch
            .queue_declare(
                names.results().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if q.message_count() as usize >= N || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm_kib = proc_status(pid, "VmHWM:").unwrap_or(0);
    let ticks = cpu_ticks(pid).unwrap_or(0);
    drop(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status(),
    );
    drop(child.wait());
    eprintln!(
        "(d) {N} jobs, all in flight at once (sandbox latency 3 s): took {:.1?}",
        started.elapsed()
    );
    topology::delete(&ch, &config).await?;
    // Clock ticks are 1/100 s on Linux.
    Ok((hwm_kib, ticks as f64 * 10.0 / N as f64))
}

/// `octopods-worker sandbox --constant` in its own process.
struct ConstantServer {
    child: std::process::Child,
    url: String,
}

impl ConstantServer {
    async fn start() -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
            .args([
                "sandbox",
                "--constant",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for ConstantServer {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Res<()> {
    let n: usize = env_or("BENCH_JOBS", 30_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ is not reachable at {}: {e}", amqp_url()))?;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "bench-key")?;
    let prefetch: u16 = env_or("BENCH_PREFETCH", 256);

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "d" {
        let (hwm_kib, cpu_ms) = memory(&conn, &key_file, dir.path()).await?;
        println!(
            "(d) 5000 jobs in flight: peak RSS {:.1} MiB (target < 48), CPU {cpu_ms:.3} ms per job",
            hwm_kib as f64 / 1024.0
        );
        return Ok(());
    }
    let server = ConstantServer::start().await?;
    let rounds = if only == "cd" { 0 } else { rounds };
    let mut ratios = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let a = ceiling(&conn, &server.url, n, prefetch).await?;
        let prefix = format!("bench-worker-{}-{round}", std::process::id());
        let config = worker_config(
            &prefix,
            &server.url,
            &key_file,
            &[("fast", 1_000_000.0)],
            prefetch,
        )?;
        let b = worker_run(&conn, config, n).await?;
        println!(
            "round {round}: (a) ceiling {a:8.0} jobs/s   (b) worker {b:8.0} jobs/s   ratio {:.2}   [{n} jobs, prefetch {prefetch}]",
            b / a
        );
        ratios.push(b / a);
    }
    drop(server);
    ratios.sort_by(f64::total_cmp);
    if rounds > 0 {
        println!(
            "(b)/(a) median ratio over {rounds} rounds: {:.2}  (target ≥ 0.85)",
            ratios.get(ratios.len() / 2).copied().unwrap_or_default()
        );
    }

    if only == "ab" {
        return Ok(());
    }
    let slow = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse()?,
        latency: Duration::from_millis(200),
        api_keys: vec![],
        rate_limit: None,
        templates: Vec::new(),
        delivered_after: Duration::from_millis(300),
        read_after: Duration::from_millis(600),
    })
    .await?;
    let (per_channel_prefetch, budgets) = (16u16, [("c1", 200.0), ("c2", 200.0)]);
    let expected = f64::min(
        budgets.iter().map(|b| b.1).sum(),
        f64::from(per_channel_prefetch) * budgets.len() as f64 / 0.2,
    );
    let prefix = format!("bench-latency-{}", std::process::id());
    let config = worker_config(
        &prefix,
        &slow.url(),
        &key_file,
        &budgets,
        per_channel_prefetch,
    )?;
    let jobs = (expected * 8.0) as usize;
    let c = worker_run(&conn, config, jobs).await?;
    println!(
        "(c) sandbox latency 200 ms, 2 channels × 200/s, prefetch 16: {c:6.1} jobs/s of min(400, 2×16/0.2 s = 160) = {expected:.0}; ratio {:.2} (target ≥ 0.95)",
        c / expected
    );

    let (hwm_kib, cpu_ms) = memory(&conn, &key_file, dir.path()).await?;
    println!(
        "(d) 5000 jobs in flight: peak RSS {:.1} MiB (target < 48), CPU {cpu_ms:.3} ms per job",
        hwm_kib as f64 / 1024.0
    );
    drop(conn.close(200, "OK".into()).await);
    Ok(())
}
