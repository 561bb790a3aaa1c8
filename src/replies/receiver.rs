//! The webhook receiver (docs/contract.md §15): `POST /hooks/intercom` and
//! `POST /hooks/hubspot` on a listener of their own. A request is verified
//! over its raw bytes, read into [`Inbound`] messages and each confirmed
//! into the replies queue before the answer: 200 when all are in the
//! broker; 401 for a bad signature (nothing kept), 413 for a body over
//! `replies.max_body`, 400 for a signed body that is not the platform's
//! shape, 503 when the broker cannot take it (the platform retries).
//! Nothing of the body is logged.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    routing::post,
};
use lapin::BasicProperties;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    inbound::{self, Inbound, Payload},
    signature,
};
use crate::{
    broker::{Names, Publisher},
    config::{Config, Platform, Secret},
    observe::metrics::Metrics,
};

/// The publisher of the current broker session, if there is one (it tells
/// the session of a refused publish itself: `Publisher::reporting_to`).
pub(crate) type PublisherSlot = watch::Receiver<Option<Publisher>>;

/// What the receiver needs.
struct Receiver {
    /// Each distinct signing secret, with its platform.
    secrets: Vec<(Platform, Secret)>,
    public_url: Option<String>,
    inbox: String,
    publisher: PublisherSlot,
    metrics: Arc<Metrics>,
}

/// The receiver's routes, for `config`'s reply-tracking channels whose
/// secrets are `secrets` (channel order; `None` for the others).
pub(crate) fn router(
    config: &Config,
    secrets: &[Option<crate::config::ReplySecrets>],
    publisher: PublisherSlot,
    metrics: Arc<Metrics>,
) -> Router {
    let mut distinct: Vec<(Platform, Secret)> = Vec::new();
    for (c, s) in config.channels.iter().zip(secrets) {
        let (Some(r), Some(s)) = (&c.replies, s) else {
            continue;
        };
        if !distinct
            .iter()
            .any(|(p, d)| *p == r.platform && d.expose() == s.signing.expose())
        {
            distinct.push((r.platform, s.signing.clone()));
        }
    }
    let receiver = Arc::new(Receiver {
        secrets: distinct,
        public_url: config
            .replies
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        inbox: Names::new(&config.broker.prefix).replies(),
        publisher,
        metrics,
    });
    Router::new()
        .route("/hooks/intercom", post(intercom))
        .route("/hooks/hubspot", post(hubspot))
        .layer(DefaultBodyLimit::max(config.replies.max_body))
        .with_state(receiver)
}

async fn intercom(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let start = Instant::now();
    let header = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let verified = r
        .secrets
        .iter()
        .filter(|(p, _)| *p == Platform::Intercom)
        .any(|(_, s)| signature::intercom(s, header, &body));
    let answer = if verified {
        r.take(inbound::intercom(&body)).await
    } else {
        r.metrics.reply("unknown", "bad_signature");
        (StatusCode::UNAUTHORIZED, "bad signature\n")
    };
    r.metrics
        .reply_webhook("intercom", answer.0.as_u16(), start.elapsed());
    answer
}

async fn hubspot(
    State(r): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let start = Instant::now();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let path = uri
        .path_and_query()
        .map_or("/hooks/hubspot", |p| p.as_str());
    let uris: Vec<String> = match &r.public_url {
        Some(base) => vec![format!("{base}{path}")],
        None => {
            let host = text("host");
            vec![
                format!("https://{host}{path}"),
                format!("http://{host}{path}"),
            ]
        }
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
    )
    .unwrap_or(i64::MAX);
    let (sig, ts) = (
        text("x-hubspot-signature-v3"),
        text("x-hubspot-request-timestamp"),
    );
    let mut refused = signature::Refused::Signature;
    let verified = r
        .secrets
        .iter()
        .filter(|(p, _)| *p == Platform::Hubspot)
        .any(|(_, s)| {
            match signature::hubspot(s, sig, ts, method.as_str(), &uris, &body, now_ms) {
                Ok(()) => true,
                Err(why) => {
                    refused = why;
                    false
                }
            }
        });
    let answer = if verified {
        r.take(inbound::hubspot(&body)).await
    } else {
        r.metrics.reply("unknown", "bad_signature");
        match refused {
            signature::Refused::Stale => (StatusCode::UNAUTHORIZED, "stale timestamp\n"),
            signature::Refused::Signature => (StatusCode::UNAUTHORIZED, "bad signature\n"),
        }
    };
    r.metrics
        .reply_webhook("hubspot", answer.0.as_u16(), start.elapsed());
    answer
}

impl Receiver {
    /// Confirms each message into the replies queue; answers when all are in.
    async fn take(&self, payload: Result<Payload, String>) -> (StatusCode, &'static str) {
        let messages = match payload {
            Ok(Payload::Messages(m)) => m,
            Ok(Payload::Nothing(why)) => {
                debug!(why, "webhook holds no customer message");
                return (StatusCode::OK, "nothing to do\n");
            }
            Err(why) => {
                warn!(error = %crate::observe::logging::escape(&why), "a signed webhook is not the platform's shape");
                return (
                    StatusCode::BAD_REQUEST,
                    "not a webhook this receiver reads\n",
                );
            }
        };
        let Some(publisher) = self.publisher.borrow().clone() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not connected to the broker\n",
            );
        };
        for m in &messages {
            if let Err(e) = enqueue(&publisher, &self.inbox, m).await {
                warn!(error = %e, "cannot hand a webhook to the broker; answering 503 so the platform retries");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the broker did not take it\n",
                );
            }
        }
        (StatusCode::OK, "ok\n")
    }
}

/// Publishes `m` into the replies queue `inbox`, confirmed and routed.
pub(crate) async fn enqueue(
    publisher: &Publisher,
    inbox: &str,
    m: &Inbound,
) -> Result<(), crate::broker::PublishError> {
    let body = serde_json::to_vec(m).map_err(|_| crate::broker::PublishError::Nacked)?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    publisher
        .publish("", inbox, &body, properties, false)
        .await
        .map(|_| ())
}
