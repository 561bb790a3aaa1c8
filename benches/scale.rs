//! `cargo bench --bench scale`: many channels (issue 38, docs/operations.md
//! Sizing), with the release binary against a constant-answer stand-in.
//! For each count in `SCALE_CHANNELS` (default `100,1000`), each channel
//! at 10/s, burst 1, one job each:
//!
//! | channels | `topology` | worker ready | all sent | worker RSS | idle CPU | broker memory | budget |
//!
//! - `topology`: `octopods-worker topology` (declares every queue), wall time;
//! - worker ready: `run` started → `/readyz` 200;
//! - all sent: one job per channel published (confirmed) → every channel's
//!   first `sent` event read;
//! - worker RSS after, and its CPU over `SCALE_IDLE` seconds idle (default 10);
//! - budget: `SCALE_SAMPLE` channels (default 5) get `SCALE_BACKLOG` jobs
//!   (default 40) instead of one; the most `sent` events (by `sent_at`) of
//!   one of them in any second, against what 10/s with burst 1 allows (11):
//!   with several replicas, one budget across them;
//! - broker memory: `erlang:memory(total)` of each node (`SCALE_NODES`,
//!   default `rabbit@$(hostname -s)`, through `RABBITMQCTL`, default `rabbitmqctl`).
//!
//! `AMQP_URL` (a comma-separated list for a cluster) picks the broker;
//! `SCALE_HISTOGRAMS` (`true` or `false`) sets `http.channel_histograms`;
//! `SCALE_REPLICAS` (default 1) starts that many workers, each with every
//! channel (ready: all of them; RSS and CPU: each).
//! `SCALE_ADDED=true` gives the channels at run time instead of in the file:
//! one `add` record each in the control stream, as `channel add` appends
//! them (`topology` then declares the rest; each worker folds the stream
//! and declares the channels' queues before it is ready).

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use octopods_worker::{broker::topology, config::Config};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Every channel's budget, as written into the configs.
const RATE_PER_SECOND: usize = 10;
const BURST: usize = 1;

fn urls() -> Vec<String> {
    std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn proc_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn broker_memory_mib() -> Vec<String> {
    let ctl = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let host = Command::new("hostname")
        .arg("-s")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let nodes = std::env::var("SCALE_NODES").unwrap_or_else(|_| format!("rabbit@{host}"));
    nodes
        .split(',')
        .map(|n| {
            let out = Command::new(&ctl)
                .args(["-n", n, "eval", "erlang:memory(total)."])
                .output();
            match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .map(|b| format!("{:.0}", b / 1048576.0))
                    .unwrap_or_else(|_| "?".into()),
                Err(_) => "?".into(),
            }
        })
        .collect()
}

/// A config with `n` channels and the HTTP port of replica `replica`.
fn config(
    dir: &std::path::Path,
    prefix: &str,
    n: usize,
    peer: u16,
    replica: usize,
) -> Res<(std::path::PathBuf, u16)> {
    let http = free_port()?;
    // Each replica prefers another node first (a cluster's load spread).
    let mut nodes = urls();
    let len = nodes.len();
    nodes.rotate_left(replica % len);
    let list: Vec<String> = nodes.iter().map(|u| format!("\"{u}\"")).collect();
    // `SCALE_HISTOGRAMS=true|false` sets `http.channel_histograms` (unset:
    // its default, one for all channels past 200).
    let histograms = std::env::var("SCALE_HISTOGRAMS")
        .map(|v| format!("channel_histograms = {v}\n"))
        .unwrap_or_default();
    let mut text = format!(
        "[broker]\nurls = [{}]\nprefix = \"{prefix}\"\n[octopods]\nbase_url = \"http://127.0.0.1:{peer}\"\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n{histograms}[worker]\nspread_window = \"0ms\"\n",
        list.join(", ")
    );
    std::fs::write(dir.join("key"), "k")?;
    if added() {
        text.push_str(&format!("channel_keys_dir = \"{}\"\n", dir.display()));
    }
    for i in (0..n).filter(|_| !added()) {
        text.push_str(&format!(
            "[[channels]]\nname = \"shop-{i:05}\"\napi_key_file = \"{}/key\"\n\
             rate_per_second = {RATE_PER_SECOND}\nburst = {BURST}\n",
            dir.display()
        ));
    }
    let path = dir.join(format!("{prefix}-{replica}.toml"));
    std::fs::write(&path, text)?;
    Ok((path, http))
}

fn stop(mut child: Child) {
    drop(Command::new("kill").arg(child.id().to_string()).status());
    drop(child.wait());
}

/// Replicas started (`SCALE_REPLICAS`, default 1), each with every channel.
/// Channels given at run time (`SCALE_ADDED=true`), not in the file.
fn added() -> bool {
    std::env::var("SCALE_ADDED").is_ok_and(|v| v == "true")
}

fn replicas() -> usize {
    std::env::var("SCALE_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// Seconds from `t` until the worker on `http` answers `/readyz` with
/// 200; `None` after 10 minutes.
async fn ready_since(http: u16, t: Instant) -> Option<f64> {
    let url = format!("http://127.0.0.1:{http}/readyz");
    while t.elapsed() <= Duration::from_secs(600) {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Measures `n` channels and prints their row.
async fn one_count(n: usize, peer: u16) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("scale-{n}-{}", std::process::id());
    let mut configs = Vec::new();
    for r in 0..replicas() {
        configs.push(config(dir.path(), &prefix, n, peer, r)?);
    }
    let path = configs[0].0.clone();
    let bin = env!("CARGO_BIN_EXE_octopods-worker");
    let t = Instant::now();
    let declared = Command::new(bin)
        .args(["topology", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let topology_s = t.elapsed().as_secs_f64();
    if !declared.success() {
        return Err(format!("topology failed for {n} channels").into());
    }
    let conn = Connection::connect(&urls()[0], ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    if added() {
        add_channels(&ch, &prefix, n).await?;
    }
    let t = Instant::now();
    let mut workers = Vec::new();
    for (r, (path, _)) in configs.iter().enumerate() {
        workers.push(start(path, &dir.path().join(format!("worker-{r}.log")))?);
    }
    let pids: Vec<u32> = workers.iter().map(Child::id).collect();
    // Ready: every replica's `/readyz` answered 200.
    let mut ready = Some(0.0);
    for (_, http) in &configs {
        ready = ready_since(*http, t).await;
        if ready.is_none() {
            break;
        }
    }
    let Some(ready_s) = ready else {
        let log = std::fs::read_to_string(dir.path().join("worker-0.log")).unwrap_or_default();
        workers.into_iter().for_each(stop);
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        row(format!(
            "| {n} | {topology_s:.1} s | never: {} | — | — | — | — | — |",
            tail.join(" / ")
        ));
        return Ok(());
    };
    let mut events = ch
        .basic_consume(
            format!("{prefix}.results").as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (sample, backlog) = (
        env_or("SCALE_SAMPLE", 5).min(n),
        env_or("SCALE_BACKLOG", 40).max(1),
    );
    let jobs = n + sample * (backlog - 1);
    let t = Instant::now();
    for i in 0..n {
        for b in 0..if i < sample { backlog } else { 1 } {
            let job = json!({"job_id": format!("j-{i}-{b}"), "destination_phone": format!("+1555{i:07}"),
                "waba_interactive_message": octopods_worker::job::delivery_confirmation()});
            drop(
                ch.basic_publish(
                    format!("{prefix}.jobs").as_str().into(),
                    format!("shop-{i:05}").as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&job)?,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
            );
        }
    }
    ch.wait_for_confirms().await?;
    // All sent: every channel's first job (a sampled channel's backlog
    // comes after it); then the backlogs finish, for the budget column.
    let (mut sent, mut firsts, mut all_sent) = (0, 0, None);
    let mut sent_at: Vec<Vec<u64>> = vec![Vec::new(); sample];
    while sent < jobs {
        match tokio::time::timeout(Duration::from_secs(300), events.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(BasicAckOptions::default()).await?;
                sent += 1;
                let send = sampled_send(&d.data);
                if send.as_ref().is_some_and(|s| s.first) {
                    firsts += 1;
                    if firsts == n {
                        all_sent = Some(t.elapsed());
                    }
                }
                if let Some(s) = send.filter(|s| s.channel < sample) {
                    sent_at[s.channel].push(s.at_ms);
                }
            }
            _ => break,
        }
    }
    let budget = budget_column(&mut sent_at, backlog);
    let all_sent = match all_sent {
        Some(took) => format!("{:.1} s", took.as_secs_f64()),
        None => format!("{firsts} of {n} in 300 s"),
    };
    let idle = std::env::var("SCALE_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10u64);
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let cpu = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| {
            let c = cpu_ticks(*p).saturating_sub(*b) as f64 / 100.0 / idle as f64 * 100.0;
            format!("{c:.1}")
        })
        .collect::<Vec<_>>()
        .join(" / ");
    let rss = pids
        .iter()
        .map(|p| format!("{:.0}", proc_field(*p, "VmRSS:") as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(" / ");
    let memory = broker_memory_mib().join(" / ");
    workers.into_iter().for_each(stop);
    // The row first: deleting 10,000 queues of a cluster takes minutes.
    row(format!(
        "| {n} | {topology_s:.1} s | {ready_s:.1} s | {all_sent} | {rss} MiB | {cpu} % | {memory} MiB | {budget} |"
    ));
    // A restart, every queue there already: what a rolling update costs.
    let t = Instant::now();
    let again = start(&path, &dir.path().join("restart.log"))?;
    let restarted = ready_since(configs[0].1, t).await;
    stop(again);
    eprintln!(
        "{n} channels: one replica restarted, ready in {}",
        restarted.map_or("(not within 10 min)".into(), |s| format!("{s:.1} s"))
    );
    let t = Instant::now();
    let cfg = Config::load(&path)?;
    topology::delete(&conn, &cfg).await?;
    if added() {
        let queues: Vec<String> = (0..n)
            .map(|i| format!("{prefix}.jobs.shop-{i:05}"))
            .collect();
        topology::delete_queues(&conn, queues.iter().map(String::as_str)).await?;
    }
    eprintln!(
        "{n} channels' topology deleted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(conn.close(200, "done".into()).await);
    Ok(())
}

/// One `add` record per channel appended to the control stream, in the
/// form `channel add` appends (docs/contract.md §16).
async fn add_channels(ch: &lapin::Channel, prefix: &str, n: usize) -> Res<()> {
    for i in 0..n {
        let record = json!({"channel": format!("shop-{i:05}"), "op": "add",
            "rate": RATE_PER_SECOND as f64, "burst": BURST, "key": "key",
            "at": "2026-12-08T00:00:00Z", "by": "bench"});
        drop(
            ch.basic_publish(
                "".into(),
                format!("{prefix}.control").as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&record)?,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
        );
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

/// `octopods-worker run` with `config`, its log to `log`.
fn start(config: &std::path::Path, log: &std::path::Path) -> Res<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

fn row(line: String) {
    println!("{line}");
    drop(std::io::stdout().flush());
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `sent` event: its channel's index, whether it was the channel's first
/// job, and its `sent_at` in Unix milliseconds.
struct SentEvent {
    channel: usize,
    first: bool,
    at_ms: u64,
}

fn sampled_send(body: &[u8]) -> Option<SentEvent> {
    let e: serde_json::Value = serde_json::from_slice(body).ok()?;
    if e["event"] != "sent" {
        return None;
    }
    let at = humantime::parse_rfc3339(e["sent_at"].as_str()?).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(SentEvent {
        channel: e["channel"].as_str()?.strip_prefix("shop-")?.parse().ok()?,
        first: e["job_id"].as_str()?.ends_with("-0"),
        at_ms: u64::try_from(ms).ok()?,
    })
}

/// The most sends of one sampled channel within any second, and what its
/// budget allows there (10/s with burst 1: 11): `max 11 / 11`, or `… EXCEEDED`.
fn budget_column(sent_at: &mut [Vec<u64>], backlog: usize) -> String {
    // A full burst at the window's start, then the rate's sends within it.
    const ALLOWED: usize = BURST + RATE_PER_SECOND;
    let mut most = 0;
    for at in sent_at.iter_mut() {
        at.sort_unstable();
        for (i, start) in at.iter().enumerate() {
            let within = at[i..].iter().take_while(|t| **t < start + 1000).count();
            most = most.max(within);
        }
    }
    let counted: usize = sent_at.iter().map(Vec::len).sum();
    let verdict = if most <= ALLOWED { "held" } else { "EXCEEDED" };
    format!(
        "{verdict}: max {most} / {ALLOWED} in 1 s ({} channels × {backlog}, {counted} sends)",
        sent_at.len()
    )
}

#[tokio::main]
async fn main() -> Res<()> {
    let counts: Vec<usize> = std::env::var("SCALE_CHANNELS")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let peer = free_port()?;
    let sandbox = Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args([
            "sandbox",
            "--constant",
            "--listen",
            &format!("127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "| channels | `topology` | worker ready | all sent | worker RSS | idle CPU | broker memory | budget |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in counts {
        if let Err(e) = one_count(n, peer).await {
            row(format!("| {n} | error: {e} |"));
        }
    }
    stop(sandbox);
    Ok(())
}
