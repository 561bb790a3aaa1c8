//! Publish a delivery-confirmation job to octopods-worker with lapin, then wait
//! for its result event on your own queue.
//!
//! ```text
//! cargo run --example producer -- store-eu 1234 +15551234567
//! ```
//!
//! The job is persistent and published with confirms: once `publish` returns,
//! the broker has it. `AMQP_URL` overrides the broker, `OCTOPODS_PREFIX` the
//! topology prefix.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let channel = args.next().unwrap_or_else(|| "store-eu".into());
    let order = args.next().unwrap_or_else(|| "1234".into());
    let phone = args.next().unwrap_or_else(|| "+15551234567".into());
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = std::env::var("OCTOPODS_PREFIX").unwrap_or_else(|_| "octopods".into());

    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;

    // To wait for this one job's event, a private queue of our own (exclusive,
    // gone when we disconnect), bound before publishing: the events it gets
    // are copies, so acking the other jobs' events here takes nothing from
    // the shop's own results queue. Routing keys are `<event>.<channel>`.
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = ch
        .queue_declare("".into(), private, FieldTable::default())
        .await?
        .name()
        .clone();
    ch.queue_bind(
        queue.clone(),
        format!("{prefix}.results").as_str().into(),
        format!("*.{channel}").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let job_id = format!("order-{order}/delivery-confirm");
    let job = json!({
        "job_id": job_id,
        "destination_phone": phone,
        "waba_interactive_message": {
            "type": "button",
            "body": {"text": format!("Did your order #{order} arrive today?")},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "yes", "title": "Yes, received"}},
                {"type": "reply", "reply": {"id": "not-yet", "title": "Not yet"}},
                {"type": "reply", "reply": {"id": "problem", "title": "There's a problem"}}
            ]}
        },
        "channel": channel,
        "metadata": {"order_id": order}
    });
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            format!("{prefix}.jobs").as_str().into(),
            channel.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &serde_json::to_vec(&job)?,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_correlation_id(job_id.as_str().into())
                // message_id and timestamp: the worker measures queue wait
                // (octopods_job_queue_wait_seconds) from the timestamp.
                .with_message_id(job_id.as_str().into())
                // W3C trace context: the worker continues this trace.
                .with_headers(trace_headers()?)
                .with_timestamp(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs(),
                ),
        )
        .await?
        .await?;
    if !confirm.is_ack() || confirm.take_message().is_some() {
        return Err(format!("the broker did not take {job_id}").into());
    }
    println!("published {job_id}");

    ch.basic_qos(50, Default::default()).await?;
    let mut events = ch
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let wait = async {
        while let Some(delivery) = events.next().await {
            let delivery = delivery?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            let event: Value = serde_json::from_slice(&delivery.data)?;
            if event["job_id"] == job_id.as_str() {
                println!("{event}");
                return Ok(());
            }
        }
        Err::<(), Box<dyn std::error::Error>>("consumer closed".into())
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| format!("no event for {job_id} within 30 s"))??;
    conn.close(200, "OK".into()).await?;
    Ok(())
}

/// The order service's trace context (`TRACEPARENT` if set, else a new
/// trace) as AMQP headers; with OpenTelemetry, a propagator fills them.
fn trace_headers() -> Result<lapin::types::FieldTable> {
    let traceparent = match std::env::var("TRACEPARENT") {
        Ok(t) => t,
        Err(_) => {
            let mut ids = [0u8; 24];
            getrandom::fill(&mut ids).map_err(|e| format!("random ids: {e}"))?;
            let hex: String = ids.iter().map(|b| format!("{b:02x}")).collect();
            format!("00-{}-{}-01", &hex[..32], &hex[32..])
        }
    };
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent.into()),
    );
    Ok(headers)
}
