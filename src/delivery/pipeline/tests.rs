//! The whole pipeline decision as a property: arbitrary body bytes,
//! properties and headers in, and any Octopods answer; a `Settlement` out,
//! never a panic, and every AMQP value settle would publish for it
//! serializes within AMQP's limits (checked with amq-protocol's own frame
//! generator). `PROPTEST_CASES` sets the number of cases.

use std::{sync::Arc, time::Duration};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    broker::headers,
    config::{ApiKey, Config},
    delivery::dedup::Dedup,
    delivery::limit::Limiter,
    observe::metrics::Metrics,
    octopods::client::{Attempt, Client},
    outcome::{OctopodsError, Outcome, Reason, Receipt},
};

const CONFIG: &str = r#"
[retry]
immediate_attempts = 1
delays = ["10s", "1m"]
[[channels]]
name = "store-eu"
api_key_env = "UNUSED"
rate_per_second = 1000000
burst = 1000
"#;

struct Answer(Outcome);

impl crate::octopods::client::Sender for Answer {
    async fn send(
        &self,
        _endpoint: crate::octopods::client::Endpoint,
        _body: bytes::Bytes,
        _attempt: u32,
    ) -> Attempt {
        Attempt {
            status: Some(200),
            outcome: self.0.clone(),
            duration: Duration::ZERO,
        }
    }
}

/// Built once: a client (TLS roots) is costly, and the cases share nothing
/// but the dedup memory, which any order of cases may exercise.
static FIXTURE: std::sync::LazyLock<(Shared, ChannelState)> = std::sync::LazyLock::new(fixture);

fn fixture() -> (Shared, ChannelState) {
    let config = Config::from_toml(CONFIG).unwrap();
    let channel = ChannelState {
        config: config.channels[0].clone(),
        key: ApiKey::new("k"),
        limiter: Limiter::new(1_000_000.0, 1000),
        prefetch: 1,
        control: tokio::sync::watch::Sender::new(Default::default()),
        replies: None,
        removed: Default::default(),
    };
    let shared = Shared {
        names: crate::broker::Names::new(&config.broker.prefix),
        client: Client::new(&config.octopods).unwrap(),
        open: Semaphore::new(8),
        health: Arc::new(crate::observe::health::Health::new(
            Arc::new(Metrics::new()),
        )),
        metrics: Arc::new(Metrics::new()),
        dedup: Dedup::new(100, usize::MAX, Duration::from_secs(60)),
        replica_id: "r".into(),
        fault: None,
        config,
    };
    (shared, channel)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[\\u{1F300}-\\u{1F5FF}]{190,210}",
        Just("a\nb\u{1b}[2J".to_owned()),
        Just(String::new()),
    ]
}

fn value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<f64>().prop_map(AMQPValue::Double),
        text().prop_map(|t| AMQPValue::LongString(LongString::from(t.as_str()))),
        Just(AMQPValue::Void),
        Just(AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Void
        ]))),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(headers::ATTEMPTS.to_owned()),
        Just(headers::DELAYED.to_owned()),
        Just(headers::FIRST_ATTEMPT_AT.to_owned()),
        Just(headers::HISTORY_SIG.to_owned()),
        Just(headers::REPLAYS.to_owned()),
        Just(headers::CHANNEL.to_owned()),
        Just(headers::REASON.to_owned()),
        Just("x-death".to_owned()),
        Just("x-delivery-count".to_owned()),
        Just(headers::RETURNED.to_owned()),
        "[a-z-]{1,255}",
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        proptest::collection::vec((header_name(), value()), 0..6),
        proptest::option::of("\\PC{0,60}"),
        proptest::option::of(any::<u8>()),
        proptest::option::of("[0-9]{1,10}"),
    )
        .prop_map(|(hs, corr, prio, exp)| {
            let mut t = FieldTable::default();
            for (k, v) in hs {
                if let Ok(k) = ShortString::try_new(k) {
                    t.insert(k, v);
                }
            }
            let mut p = BasicProperties::default().with_headers(t);
            if let Some(c) = corr.and_then(|c| ShortString::try_new(c).ok()) {
                p = p.with_correlation_id(c);
            }
            if let Some(x) = prio {
                p = p.with_priority(x).with_delivery_mode(x);
            }
            if let Some(e) = exp {
                p = p.with_expiration(e.into());
            }
            p
        })
}

fn stamp() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("0000-01-01T00:00:00Z")),
        Just(json!("2026-11-24T09:12:00Z")),
        Just(json!("not a time")),
        Just(json!(12)),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let fallback = proptest::option::of((
        any::<u64>(),
        proptest::collection::vec(text(), 0..3),
        text(),
    ));
    let job = (
        text(),
        proptest::option::of(stamp()),
        proptest::option::of(stamp()),
        any::<bool>(),
        fallback,
    )
        .prop_map(|(id, last, exp, meta, fallback)| {
            let mut j = json!({"job_id": id, "destination_phone": "+15551234567",
                               "waba_interactive_message": crate::job::delivery_confirmation()});
            if let Some(v) = last {
                j["last_inbound_at"] = v;
            }
            if let Some(v) = exp {
                j["expires_at"] = v;
            }
            if meta {
                j["metadata"] = json!({"order": "1234"});
            }
            if let Some((template_id, vars, name)) = fallback {
                j["fallback_template"] = json!({"template_id": template_id,
                    "message_variables": vars, "destination_user_name": name});
            }
            serde_json::to_vec(&j).unwrap()
        });
    prop_oneof![job, proptest::collection::vec(any::<u8>(), 0..200)]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    let reason = proptest::sample::select(Reason::ALL.to_vec());
    let cause = proptest::sample::select(crate::outcome::RetryCause::ALL.to_vec());
    prop_oneof![
        (text(), proptest::option::of(text())).prop_map(|(id, cmid)| Outcome::Sent(Receipt {
            message_id: id,
            channel_message_id: cmid,
            request_id: None,
            message_status_url: None,
            phone_number: Some("15551234567".into()),
        })),
        (cause, proptest::option::of(any::<u64>()), text()).prop_map(|(cause, after, m)| {
            Outcome::Retry {
                cause,
                after: after.map(Duration::from_secs),
                failure: Failure::local(m),
            }
        }),
        (reason, text(), any::<i64>(), any::<u16>()).prop_map(|(r, m, code, status)| {
            Outcome::DeadLetter(
                r,
                Failure {
                    message: m.clone(),
                    http_status: Some(status),
                    octopods_error: Some(OctopodsError {
                        request_id: Some(m.clone()),
                        error_code: Some(code),
                        error: Some(m),
                    }),
                },
            )
        }),
    ]
}

/// Serializes properties as the broker would receive them; `false` if they
/// do not fit AMQP.
fn fits(p: &BasicProperties) -> bool {
    cookie_factory::r#gen(lapin::protocol::basic::gen_properties(p), Vec::new()).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_delivery_and_answer_settles_within_amqp_limits(
        body in body(), props in properties(), answer in outcome()
    ) {
        let (shared, channel) = &*FIXTURE;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let stop = CancellationToken::new();
        let delivered = Delivered {
            body: &body,
            properties: &props,
            trace: &tracing::Span::none(),
        };
        let settlement = rt.block_on(decide_with(delivered, channel, shared, &stop, &Answer(answer)));
        let now = OffsetDateTime::now_utc();
        // Exactly what settle would publish: every message fits AMQP, is
        // addressed within the topology, and reads back as intended.
        // Nothing here stops or panics: every delivery must settle by
        // publishing (a hand-back or a reject would be a job not decided).
        let Settlement::Publish { messages, .. } = settlement else {
            return Err(TestCaseError::fail(format!("not settled by publishing: {settlement:?}")));
        };
        prop_assert!(!messages.is_empty());
        for m in &messages {
            prop_assert!(fits(&m.properties), "{:?}", m.properties);
            prop_assert!(headers::short(&m.exchange).is_some());
            prop_assert!(headers::short(&m.routing_key).is_some());
            prop_assert!(m.exchange.starts_with("octopods."));
            prop_assert!(m.routing_key.ends_with("store-eu"));
            match &m.body {
                crate::delivery::settlement::Body::New(b) => {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(b).is_ok());
                    prop_assert_eq!(*m.properties.delivery_mode(), Some(2));
                }
                crate::delivery::settlement::Body::Job => {
                    // Copies of the job are durable and never expire.
                    prop_assert_eq!(*m.properties.delivery_mode(), Some(2));
                    prop_assert_eq!(m.properties.expiration().clone(), None);
                }
            }
            // A delayed retry's history reads back as this deployment's own.
            if m.exchange == "octopods.retry" && m.routing_key == "octopods.jobs.store-eu" {
                let (read, trust) = headers::History::read(&m.properties, &body, "store-eu", &channel.key, now);
                prop_assert_eq!(trust, headers::Trust::Signed);
                prop_assert!(read.attempts >= 1);
            }
        }
    }
}

/// What copies handed back carried plus this copy's own count: past the
/// delivery limit (20 here) the job is poison before anything else runs,
/// as RabbitMQ would have decided had each hand-back been a nack.
#[test]
fn deliveries_spent_by_earlier_copies_count_toward_the_limit() {
    let (shared, channel) = &*FIXTURE;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = serde_json::to_vec(&json!({"job_id": "crashy"})).unwrap();
    let decide = |returned: i64, count: i64| {
        let mut h = FieldTable::default();
        h.insert(headers::RETURNED.into(), AMQPValue::LongLongInt(returned));
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(count));
        let props = BasicProperties::default().with_headers(h);
        let delivered = Delivered {
            body: &body,
            properties: &props,
            trace: &tracing::Span::none(),
        };
        let stop = CancellationToken::new();
        let sent = Answer(Outcome::Retry {
            cause: crate::outcome::RetryCause::ServerError,
            after: None,
            failure: Failure::local("unused"),
        });
        rt.block_on(decide_with(delivered, channel, shared, &stop, &sent))
    };
    let reason = |s: Settlement| match s {
        Settlement::Publish {
            report: crate::delivery::settlement::Report::DeadLettered { reason, .. },
            ..
        } => Some(reason),
        _ => None,
    };
    assert_eq!(reason(decide(18, 3)), Some(Reason::Poison));
    // At the limit, not past it: the job goes on (here: invalid, so validation).
    assert_eq!(reason(decide(18, 2)), Some(Reason::Validation));
    // A forged negative count is no count.
    assert_ne!(reason(decide(-5, 0)), Some(Reason::Poison));
}
