//! The real binary: exit codes, error messages, SIGTERM.

use std::{process::Command, time::Duration};

use octopods_worker::sandbox::{Sandbox, SandboxConfig};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_octopods-worker");

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_names_the_key_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[channels]]\nname = \"store-eu\"\napi_key_env = \"OCTOPODS_TEST_UNSET_VAR\"\nrate_per_second = 20\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("OCTOPODS_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "channels[0].api_key_env: environment variable OCTOPODS_TEST_UNSET_VAR is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_unknown_keys_and_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[[channels]]\nname = \"store-eu\"\napi_key_env = \"OCTOPODS_TEST_KEY\"\nrate_per_second = 20\n";
    let path = write_config(dir.path(), &format!("[octopods]\ntimeot = \"1s\"\n{good}"));
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeot"));

    let path = write_config(dir.path(), good);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("OCTOPODS_TEST_KEY", "k-very-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("ok"), "{all}");
    assert!(!all.contains("k-very-secret"));
}

#[tokio::test]
async fn binary_sends_a_job_and_exits_zero_on_sigterm() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let prefix = unique_prefix("binary");
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default();
    let path = write_config(
        dir.path(),
        &config_text(&prefix, &sandbox.url(), &opts, dir.path()),
    );

    let mut worker = BinaryWorker::start(&path).await;
    let addr = worker.addr.clone();

    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        format!("{prefix}.jobs").as_str().into(),
        "store-eu".into(),
        Default::default(),
        &serde_json::to_vec(&button_job("bin-1")).unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let results = format!("{prefix}.results");
    let msg = eventually(Duration::from_secs(10), "the sent event", || async {
        ch.basic_get(results.as_str().into(), Default::default())
            .await
            .ok()
            .flatten()
    })
    .await;
    let event: serde_json::Value = serde_json::from_slice(&msg.delivery.data).unwrap();
    assert_eq!(event["event"], "sent");

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("octopods_jobs_received_total{channel=\"store-eu\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("s3cret") && !metrics.contains("5551234567"));

    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    let log = worker.log().join("\n");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{log}"
    );
    assert!(log.contains("worker stopped"), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let settled = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job settled")
        .unwrap_or_else(|| panic!("no settle line in:\n{log}"));
    assert_eq!(settled["fields"]["outcome"], "sent");
    assert!(settled["fields"]["duration_ms"].is_u64());
    assert_eq!(settled["span"]["job_id"], "bin-1");
    assert_eq!(settled["span"]["channel"], "store-eu");
    assert_eq!(settled["span"]["attempt"], 1);
    assert_eq!(settled["span"]["phone"], "+1555***4567");
    assert!(
        !log.contains("s3cret"),
        "the API key leaked into the log:\n{log}"
    );
    assert!(
        !log.contains(PHONE),
        "a full phone number reached the log:\n{log}"
    );

    let config = octopods_worker::config::Config::load(&path).unwrap();
    octopods_worker::broker::topology::delete(&conn, &config)
        .await
        .unwrap();
}
