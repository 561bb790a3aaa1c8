//! `cargo bench --bench throughput`: on the same broker, against the same
//! constant HTTP answer in its own process (Debian's nginx, `nginx-light`;
//! `octopods-worker sandbox --constant` without it, or with
//! `BENCH_PEER=sandbox`), over the same pre-published jobs, in rounds whose
//! order rotates, each contender in its own process:
//!
//! (a) a bare lapin loop: classic queues, consume → POST → a small body → ack;
//!     the same-work loop: the contract's broker work (the channel queue's
//!     quorum arguments, the ≈420-byte event to a topic exchange bound to a
//!     quorum queue, persistent, mandatory, confirmed) → ack;
//! (b) `octopods-worker run`, the release binary, one channel, limits out of
//!     the way; the medians of (b)/(same-work loop) are printed last, with
//!     each process's CPU per job, the broker's, peak RSS and context
//!     switches per job;
//! (c) the worker with sandbox latency 200 ms against
//!     min(sum of budgets, prefetch × channels / 0.2 s);
//! (d) the release binary with 5,000 jobs in flight: peak RSS and CPU per job.
//!
//! `BENCH_TRACES=on` adds a contender: the worker exporting traces (every
//! job published with a `traceparent`) to an OTLP/HTTP sink in this process
//! that takes every export; `hang` to one that never answers, `refuse` to a
//! closed port. The worker without traces runs beside it, as always.
//! `BENCH_WRAP=heaptrack` runs the workers under that command (a profiler;
//! build with `--features system-allocator` for heaptrack to see the
//! allocations), `BENCH_PERF=FILE` records a `perf` profile of the worker
//! (`BENCH_PERF_ARGS` adds perf options); the figures stay the worker's own.
//! `BENCH_DEDUP=N` sets the workers' `worker.dedup_capacity` (default 10,000).
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
                job_properties(i),
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

/// A job's properties: persistent, and with `BENCH_TRACES` a `traceparent`
/// of its own trace (the shop's).
fn job_properties(i: usize) -> BasicProperties {
    let props = BasicProperties::default().with_delivery_mode(2);
    if std::env::var_os("BENCH_TRACES").is_none() {
        return props;
    }
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!(
            "00-{:032x}-{:016x}-01",
            i as u128 + 1,
            i as u64 + 1
        ))),
    );
    props.with_headers(headers)
}

/// Where the traced worker exports (`BENCH_TRACES`): a sink that takes every
/// export, one that never answers, or a closed port.
async fn start_collector(mode: &str) -> Res<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    match mode {
        "hang" => {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    held.push(socket);
                }
            });
        }
        "refuse" => drop(listener),
        _ => {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(|_: axum::body::Bytes| async { axum::http::StatusCode::OK }),
            );
            tokio::spawn(async move { drop(axum::serve(listener, app).await) });
        }
    }
    Ok(url)
}

/// What runs the jobs in a measured round, each in its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// Consume from a classic queue → POST → publish a small body to a
    /// classic queue (no confirm) → ack.
    Bare,
    /// The contract's broker work: consume from a quorum queue with the
    /// channel queue's arguments → POST → a ≈420-byte event to a topic
    /// exchange bound to a quorum queue, persistent, mandatory, confirmed → ack.
    SameWork,
    /// `octopods-worker run`, the release binary.
    Worker,
    /// The same, exporting traces (`BENCH_TRACES`).
    Traced,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Bare => "bare loop",
            Contender::SameWork => "same-work loop",
            Contender::Worker => "octopods-worker",
            Contender::Traced => "worker + traces",
        }
    }
    fn role(self) -> &'static str {
        match self {
            Contender::Bare => "bare",
            Contender::SameWork => "same-work",
            Contender::Worker => "worker",
            Contender::Traced => "traced",
        }
    }
}

fn quorum_args(channel_queue: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if channel_queue {
        // The worker's channel queue arguments (docs/contract.md §1).
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
    }
    args
}

/// The loops' queues: jobs in, results out (through `exchange` when set).
struct LoopQueues {
    jobs: String,
    results: String,
    exchange: Option<String>,
}

async fn declare_loop(ch: &Channel, prefix: &str, kind: Contender) -> Res<LoopQueues> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let q = LoopQueues {
        jobs: format!("{prefix}.jobs"),
        results: format!("{prefix}.results"),
        exchange: (kind == Contender::SameWork).then(|| format!("{prefix}.results-x")),
    };
    let (jobs_args, results_args) = match kind {
        Contender::SameWork => (quorum_args(true), quorum_args(false)),
        _ => (FieldTable::default(), FieldTable::default()),
    };
    ch.queue_declare(q.jobs.as_str().into(), durable, jobs_args)
        .await?;
    ch.queue_declare(q.results.as_str().into(), durable, results_args)
        .await?;
    if let Some(x) = &q.exchange {
        ch.exchange_declare(
            x.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            q.results.as_str().into(),
            x.as_str().into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(q)
}

async fn delete_loop(ch: &Channel, q: &LoopQueues) {
    for name in [&q.jobs, &q.results] {
        drop(
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await,
        );
    }
    if let Some(x) = &q.exchange {
        drop(
            ch.exchange_delete(x.as_str().into(), Default::default())
                .await,
        );
    }
}

/// A loop's child process: consumes until killed.
async fn run_loop(kind: Contender) -> Res<()> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let (jobs_q, results_q, peer) = (
        var("BENCH_QUEUE")?,
        var("BENCH_RESULTS")?,
        var("BENCH_PEER")?,
    );
    let exchange = std::env::var("BENCH_EXCHANGE").ok();
    let prefetch: u16 = env_or("BENCH_PREFETCH", 256);
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let http = reqwest::Client::new();
    let url = format!("{peer}/api/v1/whatsapp/interactive");
    let consume_ch = conn.create_channel().await?;
    consume_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let pub_ch = conn.create_channel().await?;
    if kind == Contender::SameWork {
        pub_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let mut consumer = consume_ch
        .basic_consume(
            jobs_q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let target: Arc<(String, String)> = Arc::new(match &exchange {
        Some(x) => (x.clone(), "sent.fast".to_owned()),
        None => (String::new(), results_q.clone()),
    });
    while let Some(Ok(d)) = consumer.next().await {
        let (http, url, pub_ch, target) =
            (http.clone(), url.clone(), pub_ch.clone(), target.clone());
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
            let (exchange, key) = (target.0.as_str(), target.1.as_str());
            if kind == Contender::Bare {
                let body = serde_json::to_vec(
                    &json!({"job_id": job["job_id"], "message_id": answer["message_id"]}),
                )
                .unwrap_or_default();
                drop(
                    pub_ch
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await,
                );
            } else {
                // The worker's event, published the same way.
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
                        exchange.into(),
                        key.into(),
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
            }
            drop(d.acker.ack(BasicAckOptions::default()).await);
        });
    }
    Ok(())
}

/// One contender's round, measured from 10 % of the jobs done to all done.
#[derive(Debug, Clone, Copy)]
struct Measured {
    jobs_per_second: f64,
    /// CPU seconds of the contender's process per 1,000 jobs.
    cpu_per_1000: f64,
    /// CPU seconds of the broker (every `beam.smp`) per 1,000 jobs.
    broker_per_1000: f64,
    peak_rss_mib: f64,
    /// Context switches of the contender's threads per job: its wake-ups
    /// and thread hops.
    switches_per_job: f64,
}

/// Context switches (voluntary and not) of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The measured process under `pid`: `pid` itself, or (when a profiler such
/// as `perf` or `heaptrack` wraps it) its descendant running this project's
/// binary or the bench's own loop. Measuring or signalling the wrapper
/// would count the wrapper and leave the worker running.
fn measured_pid(pid: u32) -> u32 {
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let parent = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let wanted = |p: u32| {
        let c = comm(p);
        c.starts_with("octopods-worke") || c.starts_with("throughput")
    };
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        if wanted(p) {
            return p;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            break;
        };
        frontier.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|c| parent(*c) == Some(p)),
        );
    }
    pid
}

/// CPU ticks (1/100 s) of every `beam.smp` process.
fn broker_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .filter_map(cpu_ticks)
        .sum()
}

async fn message_count(ch: &Channel, queue: &str) -> Res<u32> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Runs `child` over the `n` jobs already queued until `results` holds `n`.
async fn watch(
    ch: &Channel,
    mut child: std::process::Child,
    results: &str,
    n: usize,
) -> Res<Measured> {
    let started = Instant::now();
    // A wrapper starts the measured process a moment after itself.
    let mut pid = measured_pid(child.id());
    let mut tenth = None;
    let outcome = loop {
        let done = message_count(ch, results).await? as usize;
        if done == 0 {
            pid = measured_pid(child.id());
        }
        if tenth.is_none() && done >= n / 10 {
            tenth = Some((
                Instant::now(),
                done,
                cpu_ticks(pid).unwrap_or(0),
                broker_ticks(),
                switches(pid),
            ));
        }
        if done >= n {
            let (from, done_then, cpu_then, broker_then, switches_then) =
                tenth.unwrap_or((started, 0, 0, 0, 0));
            let jobs = (n - done_then) as f64;
            let per_1000 = |ticks: u64| ticks as f64 / 100.0 / jobs * 1000.0;
            break Ok(Measured {
                jobs_per_second: jobs / from.elapsed().as_secs_f64(),
                cpu_per_1000: per_1000(cpu_ticks(pid).unwrap_or(0).saturating_sub(cpu_then)),
                broker_per_1000: per_1000(broker_ticks().saturating_sub(broker_then)),
                peak_rss_mib: proc_status(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
                switches_per_job: switches(pid).saturating_sub(switches_then) as f64 / jobs,
            });
        }
        if started.elapsed() > Duration::from_secs(300) {
            break Err(format!("{results}: {done} of {n} after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // TERM to the measured process: a wrapper then finishes its own work
    // (a profile written) and exits with it.
    drop(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status(),
    );
    drop(child.wait());
    outcome
}

/// What every measured round shares.
struct Setup<'a> {
    conn: &'a Connection,
    peer: &'a str,
    n: usize,
    prefetch: u16,
    key_file: &'a std::path::Path,
    dir: &'a std::path::Path,
    /// The traced worker's collector.
    otlp: Option<&'a str>,
}

/// One contender over `n` jobs, in its own process, against `peer`.
async fn contend(setup: &Setup<'_>, kind: Contender, round: usize) -> Res<Measured> {
    let Setup {
        conn,
        peer,
        n,
        prefetch,
        key_file,
        dir,
        otlp,
    } = *setup;
    let prefix = format!("bench-{}-{}-{round}", kind.role(), std::process::id());
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    if matches!(kind, Contender::Worker | Contender::Traced) {
        let text = worker_toml(&prefix, peer, key_file, &[("fast", 1_000_000.0)], prefetch);
        let config = Config::from_toml(&text)?;
        let path = dir.join(format!("{prefix}.toml"));
        std::fs::write(&path, text)?;
        topology::declare(conn, &config).await?;
        let names = Names::new(&prefix);
        publish_jobs(&ch, &names.jobs_exchange(), &["fast".to_owned()], n).await?;
        // BENCH_PERF=FILE records a profile of the worker with perf (flat;
        // BENCH_PERF_ARGS adds perf's own options, e.g. a call graph). The
        // figures are still the worker's own (`measured_pid`).
        let mut command = match std::env::var("BENCH_PERF") {
            Ok(file) if !file.is_empty() => {
                let mut c = std::process::Command::new("perf");
                c.args(["record", "-F", "1999", "-o", &file]);
                if let Ok(extra) = std::env::var("BENCH_PERF_ARGS") {
                    c.args(extra.split_whitespace());
                }
                c.arg("--").arg(env!("CARGO_BIN_EXE_octopods-worker"));
                c
            }
            // BENCH_WRAP (e.g. heaptrack) wraps this worker too.
            _ => match std::env::var("BENCH_WRAP") {
                Ok(wrap) if !wrap.is_empty() => {
                    let mut c = std::process::Command::new(wrap);
                    c.arg(env!("CARGO_BIN_EXE_octopods-worker"));
                    c
                }
                _ => std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker")),
            },
        };
        if kind == Contender::Traced {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.unwrap_or_default());
        }
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let measured = watch(&ch, child, &names.results(), n).await;
        topology::delete(conn, &config).await?;
        return measured;
    }
    let q = declare_loop(&ch, &prefix, kind).await?;
    publish_jobs(&ch, "", std::slice::from_ref(&q.jobs), n).await?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .env("BENCH_ROLE", kind.role())
        .env("BENCH_QUEUE", &q.jobs)
        .env("BENCH_RESULTS", &q.results)
        .env("BENCH_PEER", peer)
        .env("BENCH_PREFETCH", prefetch.to_string());
    if let Some(x) = &q.exchange {
        command.env("BENCH_EXCHANGE", x);
    }
    let measured = watch(&ch, command.spawn()?, &q.results, n).await;
    delete_loop(&ch, &q).await;
    measured
}

fn worker_toml(
    prefix: &str,
    peer: &str,
    key_file: &std::path::Path,
    channels: &[(&str, f64)],
    prefetch: u16,
) -> String {
    let mut text = format!(
        "[broker]\nurl = \"{}\"\nprefix = \"{prefix}\"\nprefetch = {prefetch}\n\
         [octopods]\nbase_url = \"{peer}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [worker]\nspread_window = \"0s\"\n{}[results]\ndeclare_queue = true\n",
        amqp_url(),
        std::env::var("BENCH_DEDUP")
            .map(|n| format!("dedup_capacity = {n}\n"))
            .unwrap_or_default()
    );
    for (name, rate) in channels {
        text.push_str(&format!(
            "[[channels]]\nname = \"{name}\"\napi_key_file = \"{}\"\nrate_per_second = {rate}\nburst = {}\n",
            key_file.display(),
            (*rate as u32).clamp(1, 100_000)
        ));
    }
    text
}

fn worker_config(
    prefix: &str,
    peer: &str,
    key_file: &std::path::Path,
    channels: &[(&str, f64)],
    prefetch: u16,
) -> Res<Config> {
    Ok(Config::from_toml(&worker_toml(
        prefix, peer, key_file, channels, prefetch,
    ))?)
}

/// Runs the in-process worker over `n` pre-published jobs; returns jobs/s.
async fn worker_run(conn: &Connection, config: Config, n: usize) -> Res<f64> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    topology::declare(conn, &config).await?;
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
    topology::delete(conn, &config).await?;
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
    topology::declare(conn, &config).await?;
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
    let started = Instant::now();
    let mut peak_in_flight = 0;
    loop {
        let in_sandbox = sandbox.requests().len();
        peak_in_flight = peak_in_flight.max(in_sandbox);
        let done = message_count(&ch, &names.results()).await? as usize;
        if done >= N || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker, not a BENCH_WRAP wrapper around it (started by now).
    let pid = measured_pid(child.id());
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
    topology::delete(conn, &config).await?;
    // Clock ticks are 1/100 s on Linux.
    Ok((hwm_kib, ticks as f64 * 10.0 / N as f64))
}

/// The constant HTTP peer, in its own process: Debian's nginx answering
/// one fixed success body (`BENCH_PEER=nginx`, the default when nginx is
/// installed — `scripts/bench.sh` installs `nginx-light`), or
/// `octopods-worker sandbox --constant` (`BENCH_PEER=sandbox`).
struct Peer {
    child: std::process::Child,
    url: String,
    name: &'static str,
    _dir: tempfile::TempDir,
}

const ANSWER: &str = r#"{"request_id":"req_bench","message_id":"msg_bench","message_status_url":"http://127.0.0.1/api/v1/whatsapp/messages/msg_bench","phone_number":"+15550000000","channel_message_id":"wamid.bench"}"#;

impl Peer {
    async fn start() -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let want = std::env::var("BENCH_PEER").unwrap_or_default();
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let (child, name) = match nginx {
            Some(nginx) if want != "sandbox" => {
                let conf = dir.path().join("nginx.conf");
                let d = dir.path().display();
                std::fs::write(
                    &conf,
                    format!(
                        "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log crit;\n\
                         events {{ worker_connections 4096; }}\n\
                         http {{ access_log off; client_body_temp_path {d}; keepalive_requests 1000000;\n\
                           server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{ANSWER}'; }} }} }}\n"
                    ),
                )?;
                let child = std::process::Command::new(nginx)
                    .args(["-p"])
                    .arg(dir.path())
                    .args(["-c"])
                    .arg(&conf)
                    .stderr(std::process::Stdio::null())
                    .spawn()?;
                (child, "nginx")
            }
            _ if want == "nginx" => {
                return Err(
                    "BENCH_PEER=nginx but nginx is not installed (apt-get install nginx-light)"
                        .into(),
                );
            }
            _ => {
                let child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
                    .args([
                        "sandbox",
                        "--constant",
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                    ])
                    .stderr(std::process::Stdio::null())
                    .spawn()?;
                (child, "octopods-worker sandbox --constant")
            }
        };
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
            name,
            _dir: dir,
        })
    }

    /// CPU ticks of the peer (nginx: master and its worker).
    fn ticks(&self) -> u64 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        cpu_ticks(pid).unwrap_or(0)
            + children
                .split_whitespace()
                .filter_map(|c| cpu_ticks(c.parse().ok()?))
                .sum::<u64>()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // TERM, not KILL: nginx's master then stops its worker too.
        drop(
            std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status(),
        );
        drop(self.child.wait());
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Res<()> {
    // A loop's child process runs on one thread, as lean as such a loop is
    // written (lapin keeps its own I/O thread either way).
    let kind = match std::env::var("BENCH_ROLE").as_deref() {
        Ok("bare") => Some(Contender::Bare),
        Ok("same-work") => Some(Contender::SameWork),
        _ => None,
    };
    if let Some(kind) = kind {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run_loop(kind));
    }
    tokio::runtime::Runtime::new()?.block_on(orchestrate())
}

async fn orchestrate() -> Res<()> {
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
            "(d) 5000 jobs in flight: peak RSS {:.1} MiB (target ≤ 40), CPU {cpu_ms:.3} ms per job",
            hwm_kib as f64 / 1024.0
        );
        return Ok(());
    }
    let peer = Peer::start().await?;
    let rounds = if only == "cd" { 0 } else { rounds };
    let traces = std::env::var("BENCH_TRACES").ok();
    let otlp = match &traces {
        Some(mode) => Some(start_collector(mode).await?),
        None => None,
    };
    let mut order = vec![Contender::Bare, Contender::SameWork, Contender::Worker];
    if traces.is_some() {
        order.push(Contender::Traced);
    }
    let mut all: Vec<(Contender, Measured)> = Vec::new();
    let mut ratios = Vec::with_capacity(rounds);
    let mut traced_ratios: Vec<(f64, f64)> = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let mut this = Vec::new();
        // Alternate the order from round to round: no contender always first.
        for k in 0..order.len() {
            let kind = order[(k + round - 1) % order.len()];
            let peer_before = peer.ticks();
            let setup = Setup {
                conn: &conn,
                peer: &peer.url,
                n,
                prefetch,
                key_file: &key_file,
                dir: dir.path(),
                otlp: otlp.as_deref(),
            };
            let m = contend(&setup, kind, round).await?;
            let peer_cpu = (peer.ticks() - peer_before) as f64 / 100.0 / n as f64 * 1000.0;
            println!(
                "round {round}: {:<16} {:8.0} jobs/s   CPU {:.3} s/1000 jobs (broker {:.3}, peer {peer_cpu:.3})   peak RSS {:.1} MiB   {:.1} switches/job",
                kind.label(),
                m.jobs_per_second,
                m.cpu_per_1000,
                m.broker_per_1000,
                m.peak_rss_mib,
                m.switches_per_job
            );
            this.push((kind, m));
        }
        let get = |k: Contender| this.iter().find(|(c, _)| *c == k).map(|(_, m)| *m);
        if let (Some(w), Some(s)) = (get(Contender::Worker), get(Contender::SameWork)) {
            ratios.push((
                w.jobs_per_second / s.jobs_per_second,
                w.cpu_per_1000 / s.cpu_per_1000,
            ));
        }
        if let (Some(t), Some(w)) = (get(Contender::Traced), get(Contender::Worker)) {
            traced_ratios.push((
                t.jobs_per_second / w.jobs_per_second,
                t.cpu_per_1000 / w.cpu_per_1000,
            ));
        }
        all.extend(this);
    }
    let peer_name = peer.name;
    drop(peer);
    if rounds > 0 {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        println!(
            "\n{n} jobs × {rounds} rounds, prefetch {prefetch}, peer {}; medians:",
            peer_name
        );
        println!(
            "| | jobs/s | CPU s per 1,000 jobs | broker CPU s per 1,000 | peak RSS MiB | context switches per job |"
        );
        println!("|---|---|---|---|---|---|");
        for &kind in &order {
            let of = |f: fn(&Measured) -> f64| {
                median(
                    all.iter()
                        .filter(|(c, _)| *c == kind)
                        .map(|(_, m)| f(m))
                        .collect(),
                )
            };
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} |",
                kind.label(),
                of(|m| m.jobs_per_second),
                of(|m| m.cpu_per_1000),
                of(|m| m.broker_per_1000),
                of(|m| m.peak_rss_mib),
                of(|m| m.switches_per_job)
            );
        }
        println!(
            "worker / same-work loop: throughput {:.2} (target ≥ 0.85), CPU per job {:.2} (target ≤ 1.3)",
            median(ratios.iter().map(|r| r.0).collect()),
            median(ratios.iter().map(|r| r.1).collect())
        );
        if let Some(mode) = &traces {
            println!(
                "worker + traces (collector: {mode}) / worker: throughput {:.2}, CPU per job {:.2}",
                median(traced_ratios.iter().map(|r| r.0).collect()),
                median(traced_ratios.iter().map(|r| r.1).collect())
            );
        }
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
        "(c) sandbox latency 200 ms, 2 channels × 200/s, prefetch 16: {c:6.1} jobs/s of min(400, 2×16/0.2 s = 160) = {expected:.0}; ratio {:.2} (target ≥ 0.97)",
        c / expected
    );

    let (hwm_kib, cpu_ms) = memory(&conn, &key_file, dir.path()).await?;
    println!(
        "(d) 5000 jobs in flight: peak RSS {:.1} MiB (target ≤ 40), CPU {cpu_ms:.3} ms per job",
        hwm_kib as f64 / 1024.0
    );
    drop(conn.close(200, "OK".into()).await);
    Ok(())
}
