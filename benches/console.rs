//! The console on a large dead-letter queue: 100,000 dead letters in 200
//! groups (4 channels × 5 reasons × 10 causes, numbers varying inside each),
//! the real binary serving, timed through HTTP as a browser would ask.
//!
//! `cargo bench --bench console` (needs RabbitMQ on AMQP_URL or
//! 127.0.0.1:5672). `CONSOLE_BENCH_N` changes the count. Prints: the time of
//! the groups page (cold: it reads the snapshot; warm: from the index), of
//! the largest group's first page, how long the queue was held, the
//! console's peak RSS, and `dlq stats` on the same queue for comparison.

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use octopods_worker::{broker::topology, config::Config, ops::console::hash_password};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const REASONS: [&str; 5] = [
    "validation",
    "window",
    "rejected",
    "unauthorized",
    "retries_exhausted",
];
const CHANNELS: [&str; 4] = ["shop-a", "shop-b", "shop-c", "shop-d"];
const CAUSES: [&str; 10] = [
    "buttons[0].title: {} characters, at most 20",
    "body: {} characters, at most 1024",
    "header text: {} characters, at most 60",
    "footer: {} characters, at most 60",
    "octopods answered 400 (code {}): template not approved",
    "24 h window closed {} h ago",
    "octopods answered 401 after {} ms",
    "phone has {} digits, expected 8-15",
    "list section {} has no rows",
    "gave up after {} attempts: timeout",
];

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> Res<()> {
    let n: usize = std::env::var("CONSOLE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let dir = tempfile::tempdir()?;
    let prefix = format!("bench-console-{}", std::process::id());
    let key = dir.path().join("key");
    std::fs::write(&key, "bench-key")?;
    let password = "bench-password";
    let mut text = format!(
        "[broker]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\n[console]\nlisten = \"127.0.0.1:0\"\nexport_dir = \"{}\"\n\
         [[console.users]]\nname = \"ops\"\nrole = \"operator\"\npassword_hash = \"{}\"\n\n",
        dir.path().join("exports").display(),
        hash_password(password)?
    );
    for c in CHANNELS {
        text.push_str(&format!(
            "[[channels]]\nname = \"{c}\"\napi_key_file = \"{}\"\nrate_per_second = 10\n\n",
            key.display()
        ));
    }
    let config = Config::from_toml(&text)?;
    let config_path = dir.path().join("worker.toml");
    std::fs::write(&config_path, &text)?;
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    topology::declare(&conn, &config).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let dead = format!("{prefix}.dead");
    let mut pending = Vec::new();
    for i in 0..n {
        let g = i % 200;
        let (reason, channel, cause) = (REASONS[g % 5], CHANNELS[(g / 5) % 4], CAUSES[g / 20]);
        let error = cause.replace("{}", &(20 + i % 97).to_string());
        let mut h = FieldTable::default();
        let t = |s: &str| AMQPValue::LongString(LongString::from(s));
        h.insert("x-octopods-reason".into(), t(reason));
        h.insert("x-octopods-channel".into(), t(channel));
        h.insert("x-octopods-error".into(), t(&error));
        h.insert("x-octopods-attempts".into(), AMQPValue::LongLongInt(1));
        h.insert("x-octopods-failed-at".into(), t("2026-12-01T10:00:00Z"));
        let body = format!(
            r#"{{"job_id":"bench-{i:07}","destination_phone":"+4915112{i:06}","waba_interactive_message":{{"type":"button","body":{{"text":"Did your order arrive today?"}}}},"metadata":{{"order_id":"{i}"}}}}"#
        );
        let confirm = ch
            .basic_publish(
                "".into(),
                dead.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(h),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 2_000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending.drain(..) {
        c.await?;
    }
    eprintln!(
        "published {n} dead letters in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["console", "--config"])
        .arg(&config_path)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let addr = {
        use std::io::BufRead;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().ok_or("the console exited")??;
            if let Some(a) = line.strip_prefix("console listening on ") {
                break a.to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        addr
    };
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(300))
        .build()?;
    http.post(format!("{addr}/login"))
        .form(&[("name", "ops"), ("password", password)])
        .send()
        .await?
        .error_for_status()?;
    let rss_idle = proc_status(pid, "VmRSS:").unwrap_or(0);
    let timed = |path: String| {
        let http = http.clone();
        async move {
            let t = Instant::now();
            let body = http
                .get(path)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            Ok::<_, Box<dyn std::error::Error>>((t.elapsed(), body))
        }
    };
    let (cold, page) = timed(format!("{addr}/dead?source=dead")).await?;
    let groups = page.matches("<tr class=\"group\"").count();
    let held = page
        .split("the queue was held ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_owned();
    let (warm, _) = timed(format!("{addr}/dead?source=dead")).await?;
    let first_group = page
        .split("href=\"/dead/list?")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .replace("&amp;", "&");
    let (list, list_page) = timed(format!("{addr}/dead/list?{first_group}")).await?;
    let rows = list_page.matches("<tr class=\"row\"").count();
    let (filtered, _) = timed(format!("{addr}/dead/list?source=dead&job_id=bench-00999")).await?;
    let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status(pid, "VmHWM:").unwrap_or(0);
    let t = Instant::now();
    let stats = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
        .args(["dlq", "stats", "--config"])
        .arg(&config_path)
        .output()?;
    let stats_took = t.elapsed();
    drop(child.kill());
    drop(child.wait());
    println!("console over {n} dead letters in {groups} groups:");
    println!(
        "  groups page, cold (reads the snapshot): {:.2} s; the queue held {held} s",
        cold.as_secs_f64()
    );
    println!(
        "  groups page, warm (from the index):     {:.3} s",
        warm.as_secs_f64()
    );
    println!(
        "  a group's first page ({rows} rows):      {:.3} s",
        list.as_secs_f64()
    );
    println!(
        "  a job-id search over all:               {:.3} s",
        filtered.as_secs_f64()
    );
    println!(
        "  console RSS: {:.1} MiB logged in, {:.1} MiB with the index, peak {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  `dlq stats` on the same queue: {:.2} s (ok: {})",
        stats_took.as_secs_f64(),
        stats.status.success()
    );
    topology::delete(&conn, &config).await?;
    drop(conn.close(200, "OK".into()).await);
    Ok(())
}
