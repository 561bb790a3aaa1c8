//! The configuration's checks, key by key.

#[test]
fn password_is_redacted() {
    assert_eq!(
        super::redact_url("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
        "amqp://guest:***@10.0.0.1:5672/%2f"
    );
    assert_eq!(super::redact_url("amqp://host/"), "amqp://host/");
}

use super::*;

const MINIMAL: &str = r#"
[[channels]]
name = "store-eu"
api_key_env = "SOME_VAR"
rate_per_second = 20
burst = 5
"#;

#[test]
fn broker_nodes_from_url_urls_or_the_environment() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.broker.nodes(), vec![DEFAULT_BROKER_URL]);
    let c = Config::from_toml(&format!(
        "[broker]\nurls = [\"amqp://a:5681/%2f\", \"amqps://b/%2f\"]\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.broker.nodes(), vec!["amqp://a:5681/%2f", "amqps://b/%2f"]);
    let mut b = c.broker.clone();
    b.set_urls_from_env(" amqp://x:1/ , ,amqp://y:2/ ");
    assert_eq!(b.nodes(), vec!["amqp://x:1/", "amqp://y:2/"]);
    b.set_urls_from_env(" , ");
    assert_eq!(
        b.nodes(),
        vec!["amqp://x:1/", "amqp://y:2/"],
        "blank changes nothing"
    );

    let both = Config::from_toml(&format!(
        "[broker]\nurl = \"amqp://a/\"\nurls = [\"amqp://b/\"]\n{MINIMAL}"
    ))
    .unwrap_err();
    assert!(both.to_string().contains("not both"), "{both}");
    let bad = Config::from_toml(&format!(
        "[broker]\nurls = [\"amqp://a/\", \"http://u:secret@b/\"]\n{MINIMAL}"
    ))
    .unwrap_err()
    .to_string();
    assert!(bad.starts_with("broker.urls: http://u:***@b/"), "{bad}");
    assert!(!bad.contains("secret"), "{bad}");
    let zero = Config::from_toml(&format!("[broker]\nreplicas = 0\n{MINIMAL}")).unwrap_err();
    assert!(zero.to_string().starts_with("broker.replicas"), "{zero}");
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.broker.prefix, "octopods");
    assert_eq!(c.broker.prefetch, 64);
    assert_eq!(c.octopods.timeout, Duration::from_secs(10));
    assert_eq!(c.retry.max_attempts, 8);
    assert_eq!(c.retry.max_elapsed, Duration::from_secs(600));
    assert_eq!(c.http.listen.port(), 9464);
    assert_eq!(c.channels[0].provider, Provider::CloudApi);
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    for url in [
        "http://api.octopods.io",
        "http://10.0.0.1:8080/x",
        "http://user@evil.example",
    ] {
        let err =
            Config::from_toml(&format!("[octopods]\nbase_url = \"{url}\"\n{MINIMAL}")).unwrap_err();
        assert!(
            err.to_string().starts_with("octopods.base_url: http:// to"),
            "{url}: {err}"
        );
    }
    for url in [
        "http://127.0.0.1:9000",
        "http://localhost",
        "http://[::1]:80",
        "https://api.octopods.io",
    ] {
        Config::from_toml(&format!("[octopods]\nbase_url = \"{url}\"\n{MINIMAL}")).unwrap();
    }
}

#[test]
fn an_octopods_timeout_past_the_grace_period_is_refused() {
    let err = Config::from_toml(&format!(
        "[octopods]\ntimeout = \"40s\"\n[worker]\ngrace_period = \"30s\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("octopods.timeout: 40s is longer than worker.grace_period"),
        "{err}"
    );
}

#[test]
fn huge_durations_do_not_overflow_the_checks() {
    let err = Config::from_toml(&format!(
        "[octopods]\ntimeout = \"500000000years\"\n[worker]\ngrace_period = \"600000000years\"\n[broker]\npublish_timeout=\"1s\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert!(err.to_string().starts_with("retry:"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml(&format!("{MINIMAL}\n[retry]\nmax_atempts = 3\n")).unwrap_err();
    assert!(err.to_string().contains("max_atempts"), "{err}");
}

#[test]
fn both_key_sources_is_an_error_naming_the_channel() {
    let text = MINIMAL.replace(
        "api_key_env = \"SOME_VAR\"",
        "api_key_env = \"A\"\napi_key_file = \"/x\"",
    );
    let err = Config::from_toml(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "channels[0]: set exactly one of api_key_env and api_key_file"
    );
}

#[test]
fn zero_rate_is_rejected() {
    let err = Config::from_toml(&MINIMAL.replace("= 20", "= 0")).unwrap_err();
    assert!(err.to_string().starts_with("channels[0].rate_per_second"));
}

#[test]
fn duplicate_channel_is_rejected() {
    let text = format!("{MINIMAL}{MINIMAL}");
    let err = Config::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("configured twice"), "{err}");
}

#[test]
fn bad_duration_is_a_parse_error() {
    let err = Config::from_toml(&format!("[octopods]\ntimeout = \"ten\"\n{MINIMAL}")).unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[test]
fn missing_env_key_names_variable_not_value() {
    let c = Config::from_toml(&MINIMAL.replace("SOME_VAR", "OCTOPODS_TEST_SURELY_UNSET")).unwrap();
    let err = c.api_keys().unwrap_err();
    assert_eq!(
        err.to_string(),
        "channels[0].api_key_env: environment variable OCTOPODS_TEST_SURELY_UNSET is not set"
    );
}

#[test]
fn key_file_is_trimmed_and_never_debug_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "s3cret-key\n").unwrap();
    let text = MINIMAL.replace(
        "api_key_env = \"SOME_VAR\"",
        &format!("api_key_file = {:?}", path.display().to_string()),
    );
    let c = Config::from_toml(&text).unwrap();
    let keys = c.api_keys().unwrap();
    assert_eq!(keys[0].expose(), "s3cret-key");
    assert!(!format!("{:?}", keys[0]).contains("s3cret"));
}

#[test]
fn slow_channel_prefetch_is_capped_by_consumer_timeout() {
    let mut c = Config::from_toml(MINIMAL).unwrap();
    c.channels[0].rate_per_second = 0.01;
    c.channels[0].burst = 1;
    // 0.01/s × 450 s = 4.5 → 4, plus the burst of 1.
    assert_eq!(c.channels[0].effective_prefetch(&c.broker), 5);
    c.channels[0].rate_per_second = 100.0;
    assert_eq!(c.channels[0].effective_prefetch(&c.broker), 64);
}

#[test]
fn retry_delays_parse_and_default() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.retry.delays.len(), 4);
    assert_eq!(c.retry.immediate_attempts, 2);
    let c =
        Config::from_toml(&format!("[retry]\ndelays = [\"500ms\", \"2m\"]\n{MINIMAL}")).unwrap();
    assert_eq!(
        c.retry.delays,
        vec![Duration::from_millis(500), Duration::from_secs(120)]
    );
    let err = Config::from_toml(&format!("[retry]\ndelays = [\"soon\"]\n{MINIMAL}")).unwrap_err();
    assert!(err.to_string().contains("soon"), "{err}");
}

#[test]
fn in_process_retries_must_fit_the_consumer_timeout() {
    let text = format!(
        "[retry]\ndelays = []\nmax_attempts = 60\n[broker]\ndelivery_limit = 99\n{MINIMAL}"
    );
    let err = Config::from_toml(&text).unwrap_err();
    assert!(
        err.to_string().starts_with("retry: one delivery may take"),
        "{err}"
    );
}

#[test]
fn delivery_limit_must_exceed_attempts() {
    let err = Config::from_toml(&format!("[broker]\ndelivery_limit = 8\n{MINIMAL}")).unwrap_err();
    assert!(
        err.to_string().starts_with("broker.delivery_limit"),
        "{err}"
    );
}

#[test]
fn a_recipient_interval_past_a_day_is_refused() {
    let text = MINIMAL.replace(
        "rate_per_second = 20",
        "rate_per_second = 20\nrecipient_interval = \"1000000y\"",
    );
    let err = Config::from_toml(&text).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("channels[0].recipient_interval: at most 1 day"),
        "{err}"
    );
}

#[test]
fn telemetry_endpoints_and_bounds_are_checked() {
    for (endpoint, traces) in [
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://c.example/v1/traces", "https://c.example/v1/traces"),
    ] {
        let c = Config::from_toml(&format!(
            "[telemetry]\notlp_endpoint = \"{endpoint}\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.telemetry.traces_url().as_deref(), Some(traces));
    }
    for bad in [
        "otlp_endpoint = \"ftp://collector\"",
        "otlp_endpoint = \"collector:4318\"",
        "otlp_endpoint = \"http://\"",
        "queue_size = 0",
        "queue_size = 65537",
        "export_timeout = \"0s\"",
        "export_interval = \"1h\"",
    ] {
        let e = Config::from_toml(&format!("[telemetry]\n{bad}\n{MINIMAL}"))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("telemetry."), "{bad}: {e}");
    }
}

#[test]
fn histograms_by_channel_unless_many_or_runtime_channels() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.channel_histograms(), "a few channels from the file");
    let runtime = Config::from_toml("[worker]\nchannel_keys_dir = \"/keys\"\n").unwrap();
    assert!(!runtime.channel_histograms(), "channels added at run time");
    let mut many = String::new();
    for i in 0..201 {
        many.push_str(&format!(
            "[[channels]]\nname = \"c{i}\"\napi_key_env = \"K\"\nrate_per_second = 1\n"
        ));
    }
    assert!(
        !Config::from_toml(&many).unwrap().channel_histograms(),
        "201 channels"
    );
    let forced = Config::from_toml(&format!("[http]\nchannel_histograms = true\n{many}")).unwrap();
    assert!(forced.channel_histograms(), "set explicitly");
    let off = Config::from_toml(&format!("[http]\nchannel_histograms = false\n{MINIMAL}")).unwrap();
    assert!(!off.channel_histograms(), "set explicitly");
}
