//! `cargo bench --bench replies`: the budgets of docs/contract.md §15, on
//! the broker of `AMQP_URL`, with the release binary (`octopods-worker run`)
//! and the sandbox's Intercom stand-in answering its lookups:
//!
//! (a) **rebuild**: `BENCH_PROMPTS` prompt records (default 100,000: three
//!     options, an order id as metadata) appended to the prompt stream, then
//!     the worker started: the time until it has read them (its own log
//!     line), and its resident memory against a worker started on an empty
//!     stream — memory per open prompt;
//! (b) **receive**: signed Intercom webhooks at `BENCH_RATE` per second
//!     (default 1,000) for `BENCH_SECONDS` (default 10) from this process,
//!     each a new conversation part: p50 / p99 / max time to the 200
//!     (verified and confirmed into the broker), and how many were not 200.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use octopods_worker::{
    broker::{Names, topology},
    config::Config,
    sandbox::inbox::{Intercom, IntercomConfig},
};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SECRET: &str = "bench-client-secret";

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A config with one Intercom channel, its receiver on `hooks`.
fn config(dir: &std::path::Path, prefix: &str, api: &str, hooks: u16) -> Res<std::path::PathBuf> {
    for (name, value) in [("key", "k"), ("secret", SECRET), ("token", "t")] {
        std::fs::write(dir.join(name), value)?;
    }
    let text = format!(
        "[broker]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n[octopods]\nbase_url = \"http://127.0.0.1:9\"\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n[replies]\nlisten = \"127.0.0.1:{hooks}\"\n\
         [[channels]]\nname = \"shop\"\napi_key_file = \"{d}/key\"\nrate_per_second = 10\n\
         [channels.replies]\nplatform = \"intercom\"\nworkspace = \"ws\"\nsecret_file = \"{d}/secret\"\n\
         token_file = \"{d}/token\"\napi_url = \"{api}\"\n",
        url = amqp_url(),
        http = free_port()?,
        d = dir.display()
    );
    let path = dir.join(format!("{prefix}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Appends `n` prompt records to the stream, confirmed.
async fn append_prompts(conn: &Connection, names: &Names, n: u64) -> Res<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let stream = names.prompts();
    for i in 0..n {
        let record = json!({"record": "prompt", "channel": "shop", "job_id": format!("order-{i:08}"),
            "phone": format!("{:032x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
            "options": [{"id": "yes", "title": "Yes, received"}, {"id": "not-yet", "title": "Not yet"},
                        {"id": "problem", "title": "There's a problem"}],
            "message_id": format!("msg_{i:020}"), "channel_message_id": format!("wamid.HBgL{i:024}"),
            "sent_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
            "metadata": {"order_id": format!("{i}")}});
        drop(
            ch.basic_publish(
                "".into(),
                stream.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&record)?,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
        );
        if i % 5_000 == 4_999 {
            ch.wait_for_confirms().await?;
        }
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

/// Starts the release binary; returns it once it logged that it read the
/// prompt stream, with how long that took from its start.
fn start_worker(config: &std::path::Path) -> Res<(Child, Duration)> {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The log is on stderr; it is read to its end so the worker never blocks on it.
    let out = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("prompt stream read") {
                eprintln!("worker: {line}");
                let _read = tx.send(Instant::now());
            }
        }
    });
    let read = rx.recv_timeout(Duration::from_secs(120))?;
    Ok((child, read.duration_since(started)))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    drop(
        std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status(),
    );
    drop(child.wait());
}

/// (b): webhooks at `rate` per second for `seconds`; latencies in µs.
async fn receive(intercom: &Intercom, url: String, rate: u64, seconds: u64) -> (Vec<u64>, u64) {
    let http = reqwest::Client::new();
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (http, url, intercom) = (http.clone(), url.clone(), intercom.clone());
        tasks.spawn(async move {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let body = serde_json::to_vec(&json!({"type": "notification_event", "id": format!("notif_{i}"),
                "topic": "conversation.user.replied", "app_id": "ws", "created_at": now,
                "data": {"type": "notification_event_data", "item": {"type": "conversation", "id": format!("{}", 1000 + i % 500),
                  "contacts": {"contacts": [{"type": "contact", "id": format!("c{}", i % 500)}]},
                  "conversation_parts": {"conversation_parts": [{"id": format!("p{i}"), "part_type": "comment",
                    "body": "<p>Yes, received</p>", "created_at": now, "author": {"type": "lead", "id": format!("c{}", i % 500)}}]}}}}))
                .unwrap_or_default();
            let signature = intercom.sign(&body);
            let start = Instant::now();
            let ok = http
                .post(&url)
                .header("x-hub-signature", signature)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            (u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX), ok)
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(Ok((us, ok))) = tasks.join_next().await {
        latencies.push(us);
        if !ok {
            failed += 1;
        }
    }
    latencies.sort_unstable();
    (latencies, failed)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Res<()> {
    let prompts = env_or("BENCH_PROMPTS", 100_000);
    let rate = env_or("BENCH_RATE", 1_000);
    let seconds = env_or("BENCH_SECONDS", 10);
    let dir = tempfile::tempdir()?;
    let intercom = Intercom::start(IntercomConfig {
        app_id: "ws".into(),
        client_secret: SECRET.into(),
        token: "t".into(),
        webhook_url: "http://127.0.0.1:9/".into(),
    })
    .await?;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let run = format!("bench-replies-{}", std::process::id());

    // (a) An empty stream, then `prompts` records.
    let mut rows = Vec::new();
    for (label, n) in [("empty", 0), ("full", prompts)] {
        let prefix = format!("{run}-{label}");
        let path = config(dir.path(), &prefix, &intercom.url(), free_port()?)?;
        let cfg = Config::load(&path)?;
        topology::declare(&conn, &cfg).await?;
        let names = Names::new(&prefix);
        let appended = Instant::now();
        append_prompts(&conn, &names, n).await?;
        let append_took = appended.elapsed();
        let (child, took) = start_worker(&path)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(child.id());
        rows.push((label, n, append_took, took, rss));
        if label == "full" {
            // (b) against the worker holding the full index.
            let hooks = cfg.replies.listen;
            let (lat, failed) = receive(
                &intercom,
                format!("http://{hooks}/hooks/intercom"),
                rate,
                seconds,
            )
            .await;
            println!(
                "receive: {} webhooks at {rate}/s for {seconds} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {failed} not 200",
                lat.len(),
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                pct(&lat, 1.0)
            );
        }
        stop(child);
        topology::delete(&conn, &cfg).await?;
    }
    for (label, n, append, took, rss) in &rows {
        println!(
            "rebuild ({label}): {n} prompts appended in {:.1} s; worker read them {:.2} s after start; RSS {:.1} MiB",
            append.as_secs_f64(),
            took.as_secs_f64(),
            *rss as f64 / 1024.0
        );
    }
    if let [(_, _, _, _, empty), (_, n, _, _, full)] = rows[..]
        && n > 0
    {
        println!(
            "memory per open prompt: {:.0} bytes",
            (full.saturating_sub(empty) * 1024) as f64 / n as f64
        );
    }
    Ok(())
}
