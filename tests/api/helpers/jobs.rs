//! Sample jobs, and the payload Octopods must receive for them.

use super::*;

pub const PHONE: &str = "+15551234567";

/// A valid delivery-confirmation job.
pub fn button_job(job_id: &str) -> Value {
    serde_json::json!({
        "job_id": job_id,
        "destination_phone": PHONE,
        "waba_interactive_message": octopods_worker::job::delivery_confirmation(),
        "open_intercom_conversation": true,
        "intercom_teammate_id": "4711",
        "metadata": {"order_id": "1234"}
    })
}

pub fn list_job(job_id: &str) -> Value {
    serde_json::json!({
        "job_id": job_id,
        "destination_phone": PHONE,
        "waba_interactive_message": {
            "type": "list",
            "header": {"type": "text", "text": "Your delivery"},
            "body": {"text": "How did your delivery go?"},
            "footer": {"text": "Reply any time"},
            "action": {"button": "Choose", "sections": [
                {"title": "All fine", "rows": [{"id": "ok", "title": "Arrived, all good", "description": "Thanks!"}]},
                {"title": "Problems", "rows": [
                    {"id": "late", "title": "Not arrived yet"},
                    {"id": "damaged", "title": "Arrived damaged", "description": "We'll make it right"}
                ]}
            ]}
        },
        "metadata": {"order_id": "5678"}
    })
}

/// The payload Octopods must receive for `job`: the job minus worker-only fields.
pub fn expected_payload(job: &Value) -> Value {
    let mut p = serde_json::Map::new();
    for k in [
        "destination_phone",
        "waba_interactive_message",
        "open_intercom_conversation",
        "intercom_teammate_id",
    ] {
        if let Some(v) = job.get(k) {
            p.insert(k.into(), v.clone());
        }
    }
    Value::Object(p)
}
