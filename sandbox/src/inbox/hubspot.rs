//! A HubSpot portal with Octopods' channel in its inbox: one thread per
//! phone, messages with the sender's `deliveryIdentifier` (the E.164
//! phone), `GET /conversations/v3/conversations/threads/{t}/messages/{m}`,
//! and `conversation.newMessage` webhooks — a JSON array of events, signed
//! v3 (HMAC-SHA256, base64, over `POST` + the URL + body + timestamp) and
//! retried on 429, 5xx and no answer, not on 400/401/403/404/405.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Delivered, Faults, deliver};

#[derive(Debug, Clone)]
pub struct HubspotConfig {
    pub portal_id: u64,
    pub app_id: u64,
    /// The app's client secret (signs webhooks).
    pub client_secret: String,
    /// The access token the API takes (scope `conversations.read`).
    pub token: String,
    /// Where webhooks go (the worker's `/hooks/hubspot`), exactly as signed.
    pub webhook_url: String,
}

#[derive(Default)]
struct Portal {
    threads: HashMap<String, u64>,
    /// message id → (thread, message JSON).
    messages: HashMap<String, (u64, Value)>,
    next: u64,
}

struct Inner {
    /// Where webhooks go now (see `set_webhook_url`).
    webhook: super::Webhook,
    config: HubspotConfig,
    portal: Mutex<Portal>,
    faults: Faults,
    http: reqwest::Client,
}

/// A running HubSpot stand-in.
#[derive(Clone)]
pub struct Hubspot {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Hubspot {
    pub async fn start(config: HubspotConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            webhook: super::Webhook::new(&config.webhook_url),
            config,
            portal: Mutex::new(Portal {
                next: super::first_id(),
                ..Portal::default()
            }),
            faults: Faults::default(),
            http: super::client(),
        });
        let app = Router::new()
            .route(
                "/conversations/v3/conversations/threads/{thread}/messages/{message}",
                get(message),
            )
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        crate::server::spawn(listener, app, "hubspot stand-in", stop.clone());
        Ok(Self { inner, addr, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` lookups never answer (the caller's timeout ends them).
    pub fn hang_lookups(&self, n: u32) {
        self.inner.faults.hang_lookups(n);
    }

    /// How many lookups were asked so far.
    pub fn lookups_asked(&self) -> u32 {
        self.inner.faults.lookups_asked()
    }

    /// The next `n` lookups answer 503.
    pub fn fail_lookups(&self, n: u32) {
        self.inner.faults.fail_lookups(n);
    }

    fn portal(&self) -> std::sync::MutexGuard<'_, Portal> {
        match self.inner.portal.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        }
    }

    /// A message in `phone`'s thread; returns (thread, message id).
    fn add(&self, phone: &str, text: &str, incoming: bool) -> (u64, String) {
        let mut p = self.portal();
        p.next += 1;
        let next = p.next;
        let thread = *p
            .threads
            .entry(phone.to_owned())
            .or_insert(7_000_000 + next);
        let id = format!("{:032x}", u128::from(next) * 0x9e37_79b9_7f4a_7c15);
        let now = time::OffsetDateTime::now_utc();
        let created = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let sender = json!({"actorId": if incoming { format!("V-{next}") } else { "A-1".into() },
                            "name": null, "deliveryIdentifier": {"type": "HS_PHONE_NUMBER", "value": phone}});
        let message = json!({"type": "MESSAGE", "id": id, "conversationsThreadId": thread.to_string(),
            "createdAt": created, "createdBy": sender["actorId"], "client": {"clientType": "INTEGRATION"},
            "senders": if incoming { json!([sender]) } else { json!([]) },
            "recipients": if incoming { json!([]) } else { json!([{"deliveryIdentifier": {"type": "HS_PHONE_NUMBER", "value": phone}}]) },
            "archived": false, "text": text, "richText": format!("<div>{text}</div>"),
            "attachments": [], "truncationStatus": "NOT_TRUNCATED",
            "direction": if incoming { "INCOMING" } else { "OUTGOING" },
            "channelId": "1007", "channelAccountId": "42"});
        p.messages.insert(id.clone(), (thread, message));
        (thread, id)
    }

    /// The customer at `phone` taps `text`: a webhook for the new message.
    pub async fn tap(&self, phone: &str, text: &str) -> (Delivered, String) {
        let (thread, id) = self.add(phone, text, true);
        (self.notify(thread, &id).await, id)
    }

    /// The shop's own message to `phone` (how a sent prompt shows in the
    /// inbox): its webhook fires too.
    pub async fn outgoing(&self, phone: &str, text: &str) -> (Delivered, String) {
        let (thread, id) = self.add(phone, text, false);
        (self.notify(thread, &id).await, id)
    }

    async fn notify(&self, thread: u64, id: &str) -> Delivered {
        let c = &self.inner.config;
        let occurred = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let event = |attempt: u32| {
            json!([{"eventId": occurred + i64::from(attempt), "subscriptionId": 1_234_567, "portalId": c.portal_id,
                    "appId": c.app_id, "occurredAt": occurred, "subscriptionType": "conversation.newMessage",
                    "attemptNumber": attempt.saturating_sub(1), "objectId": thread, "messageId": id,
                    "messageType": "MESSAGE", "changeFlag": "NEW_MESSAGE", "changeSource": "USER"}])
        };
        let body = |attempt: u32| serde_json::to_vec(&event(attempt)).unwrap_or_default();
        let headers = |_, bytes: &[u8]| self.signed(bytes, now_ms());
        deliver(
            &self.inner.http,
            &self.webhook(),
            &body,
            &headers,
            &retried,
            8,
        )
        .await
    }

    /// Delivers `body` as a webhook, signed now (or with `headers` given, for
    /// tests of forgeries and replays).
    pub async fn deliver_raw(
        &self,
        body: Vec<u8>,
        headers: Option<Vec<(String, String)>>,
    ) -> Delivered {
        let headers = headers.unwrap_or_else(|| self.signed(&body, now_ms()));
        let bytes = move |_| body.clone();
        let make = move |_, _: &[u8]| headers.clone();
        deliver(
            &self.inner.http,
            &self.webhook(),
            &bytes,
            &make,
            &retried,
            1,
        )
        .await
    }

    /// The v3 headers for `body` sent at `timestamp_ms`.
    pub fn signed(&self, body: &[u8], timestamp_ms: i64) -> Vec<(String, String)> {
        let Ok(mut mac) =
            Hmac::<sha2::Sha256>::new_from_slice(self.inner.config.client_secret.as_bytes())
        else {
            return Vec::new();
        };
        mac.update(b"POST");
        mac.update(self.webhook().as_bytes());
        mac.update(body);
        mac.update(timestamp_ms.to_string().as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        vec![
            ("x-hubspot-signature-v3".into(), sig),
            (
                "x-hubspot-request-timestamp".into(),
                timestamp_ms.to_string(),
            ),
        ]
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Points the webhook subscription somewhere else (a restarted worker).
    pub fn set_webhook_url(&self, url: &str) {
        self.inner.webhook.set(url);
    }

    fn webhook(&self) -> String {
        self.inner.webhook.get()
    }
}

pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn retried(status: u16) -> bool {
    !matches!(status, 400 | 401 | 403 | 404 | 405) && !(200..300).contains(&status)
}

async fn message(
    State(s): State<Arc<Inner>>,
    Path((thread, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !super::bearer_is(&headers, &s.config.token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "category": "INVALID_AUTHENTICATION"})),
        )
            .into_response();
    }
    s.faults.asked().await;
    if s.faults.lookup_fails() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error"})),
        )
            .into_response();
    }
    let found = match s.portal.lock() {
        Ok(p) => p.messages.get(&id).cloned(),
        Err(p) => p.into_inner().messages.get(&id).cloned(),
    };
    match found {
        Some((t, m)) if t.to_string() == thread => Json(m).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "category": "OBJECT_NOT_FOUND"})),
        )
            .into_response(),
    }
}
