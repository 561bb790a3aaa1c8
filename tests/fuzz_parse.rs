//! Bad input never crashes the worker: property tests over job parsing and
//! validation, and over the classification of Octopods answers. The number of
//! cases comes from `PROPTEST_CASES` (CI runs a bounded number; the closing
//! note of the resilience issue reports a run of a million).

use octopods_worker::{
    config::Provider,
    job::Job,
    octopods::classify::{Family, classify},
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, nested a few levels, with keys drawn from the job's and
/// the interactive message's own vocabulary so the validator goes deep.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("body".to_owned()),
        Just("text".to_owned()),
        Just("header".to_owned()),
        Just("footer".to_owned()),
        Just("action".to_owned()),
        Just("buttons".to_owned()),
        Just("reply".to_owned()),
        Just("id".to_owned()),
        Just("title".to_owned()),
        Just("sections".to_owned()),
        Just("rows".to_owned()),
        Just("button".to_owned()),
        Just("description".to_owned()),
        Just("catalog_id".to_owned()),
        Just("product_retailer_id".to_owned()),
        Just("product_items".to_owned()),
        Just("parameters".to_owned()),
        Just("name".to_owned()),
        "\\PC{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("button".to_owned()),
            Just("list".to_owned()),
            Just("product".to_owned()),
            Just("product_list".to_owned()),
            Just("flow".to_owned()),
            Just("catalog_message".to_owned()),
            Just("reply".to_owned()),
            Just("text".to_owned()),
            "\\PC{0,30}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn job_with(message: Value, phone: Value, extra: Option<(String, Value)>) -> Value {
    let mut j = json!({
        "job_id": "fuzz",
        "destination_phone": phone,
        "waba_interactive_message": message,
    });
    if let Some((k, v)) = extra {
        j[k] = v;
    }
    j
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Job::parse(&bytes, "c", Provider::CloudApi);
    }

    #[test]
    fn arbitrary_messages_never_panic_and_accepted_jobs_are_sendable(
        message in json_value(),
        phone in prop_oneof![Just(json!("+15551234567")), "\\+?[0-9]{0,18}".prop_map(Value::String), json_value()],
        extra in proptest::option::of(("[a-z_]{1,24}", json_value())),
        twilio in any::<bool>(),
    ) {
        let provider = if twilio { Provider::Twilio } else { Provider::CloudApi };
        let body = job_with(message, phone, extra).to_string();
        if let Ok(job) = Job::parse(body.as_bytes(), "c", provider) {
            let sent: Value = serde_json::from_slice(&job.request_body).expect("request body is JSON");
            prop_assert!(sent["destination_phone"].is_string());
            prop_assert!(sent["waba_interactive_message"].is_object());
        }
    }

    #[test]
    fn arbitrary_answers_never_panic(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..512), json in json_value()) {
        let _ = classify(Family::Template, status, None, &body);
        let _ = classify(Family::Template, status, None, json.to_string().as_bytes());
    }
}
