//! An Intercom workspace: contacts (found by phone, else a lead is made),
//! one continuous conversation per contact, `GET /contacts/{id}` for the
//! phone, and `conversation.user.created` / `conversation.user.replied`
//! notifications signed with `X-Hub-Signature: sha1=<hex>` (HMAC-SHA1 of
//! the raw body with the app's client secret).

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
use hmac::{Hmac, Mac};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Delivered, Faults, deliver, html, unix_now};

#[derive(Debug, Clone)]
pub struct IntercomConfig {
    /// The workspace's `app_id`.
    pub app_id: String,
    /// The app's client secret (signs webhooks).
    pub client_secret: String,
    /// The access token the API takes.
    pub token: String,
    /// Where notifications go (the worker's `/hooks/intercom`).
    pub webhook_url: String,
}

#[derive(Default)]
struct Workspace {
    /// phone → contact id; contact id → phone.
    by_phone: HashMap<String, String>,
    phones: HashMap<String, String>,
    /// contact id → its conversation.
    conversations: HashMap<String, String>,
    next: u64,
}

struct Inner {
    /// Where webhooks go now (see `set_webhook_url`).
    webhook: super::Webhook,
    config: IntercomConfig,
    workspace: Mutex<Workspace>,
    faults: Faults,
    http: reqwest::Client,
}

/// A running Intercom stand-in.
#[derive(Clone)]
pub struct Intercom {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// How a tap is delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tap {
    /// Open a new conversation for this message (Intercom may, for a reply
    /// to a proactive message, or after inactivity).
    pub new_conversation: bool,
    /// Send the same notification twice (at-least-once delivery).
    pub twice: bool,
    /// Plain text instead of `<p>…</p>` (API version 2.15 and later).
    pub plain: bool,
}

impl Intercom {
    pub async fn start(config: IntercomConfig) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `listen`: the API (`GET /contacts/{id}`) and, for demos,
    /// `POST /_sandbox/tap` `{"phone": "+…", "text": "Yes, received"}`.
    pub async fn start_on(listen: SocketAddr, config: IntercomConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            webhook: super::Webhook::new(&config.webhook_url),
            config,
            workspace: Mutex::new(Workspace {
                next: super::first_id(),
                ..Workspace::default()
            }),
            faults: Faults::default(),
            http: super::client(),
        });
        let stop = CancellationToken::new();
        let me = Self {
            inner,
            addr,
            stop: stop.clone(),
        };
        let app = Router::new()
            .route("/contacts/{id}", get(contact))
            .route("/_sandbox/tap", axum::routing::post(tap_handler))
            .with_state(me.clone());
        crate::server::spawn(listener, app, "intercom stand-in", stop);
        Ok(me)
    }

    /// The API's base URL (the worker's `api_url`).
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

    fn workspace(&self) -> std::sync::MutexGuard<'_, Workspace> {
        match self.inner.workspace.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        }
    }

    /// What Octopods does on a send to `phone`: the contact (a new lead if
    /// none) and its conversation. Returns (contact id, conversation id).
    pub fn conversation_for(&self, phone: &str) -> (String, String) {
        let mut w = self.workspace();
        let contact = match w.by_phone.get(phone) {
            Some(c) => c.clone(),
            None => {
                w.next += 1;
                let c = format!("6{}", w.next);
                w.by_phone.insert(phone.to_owned(), c.clone());
                w.phones.insert(c.clone(), phone.to_owned());
                c
            }
        };
        let conversation = match w.conversations.get(&contact) {
            Some(c) => c.clone(),
            None => {
                w.next += 1;
                let c = format!("1{}", w.next);
                w.conversations.insert(contact.clone(), c.clone());
                c
            }
        };
        (contact, conversation)
    }

    /// The customer at `phone` taps an option titled `text` (or writes it):
    /// the notification is signed and delivered. Returns the delivery and the
    /// conversation part's id.
    pub async fn tap(&self, phone: &str, text: &str, how: Tap) -> (Delivered, String) {
        let created = how.new_conversation || !self.workspace().by_phone.contains_key(phone);
        if how.new_conversation {
            let mut w = self.workspace();
            if let Some(contact) = w.by_phone.get(phone).cloned() {
                w.conversations.remove(&contact);
            }
        }
        let (contact, conversation) = self.conversation_for(phone);
        let part = {
            let mut w = self.workspace();
            w.next += 1;
            format!("9{}", w.next)
        };
        let body_text = if how.plain {
            text.to_owned()
        } else {
            html(text)
        };
        let now = unix_now();
        let author = json!({"type": "lead", "id": contact, "name": null, "email": ""});
        let item = if created {
            json!({"type": "conversation", "id": conversation, "created_at": now,
                   "source": {"type": "conversation", "id": part, "delivered_as": "customer_initiated",
                              "body": body_text, "author": author},
                   "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact, "external_id": null}]},
                   "tags": {"type": "tag.list", "tags": [{"type": "tag", "name": "whatsapp"}]},
                   "conversation_parts": {"type": "conversation_part.list", "conversation_parts": [], "total_count": 0}})
        } else {
            json!({"type": "conversation", "id": conversation, "created_at": now - 60, "updated_at": now,
                   "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact, "external_id": null}]},
                   "tags": {"type": "tag.list", "tags": [{"type": "tag", "name": "whatsapp"}]},
                   "conversation_parts": {"type": "conversation_part.list", "total_count": 1, "conversation_parts": [
                       {"type": "conversation_part", "id": part, "part_type": "comment", "body": body_text,
                        "created_at": now, "updated_at": now, "author": author, "attachments": []}]}})
        };
        let topic = if created {
            "conversation.user.created"
        } else {
            "conversation.user.replied"
        };
        let notif = format!(
            "notif_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let app_id = self.inner.config.app_id.clone();
        let body = move |attempt: u32| {
            serde_json::to_vec(
                &json!({"type": "notification_event", "id": notif, "topic": topic,
                "app_id": app_id, "created_at": now, "delivery_attempts": attempt,
                "first_sent_at": now, "data": {"type": "notification_event_data", "item": item}}),
            )
            .unwrap_or_default()
        };
        let times = if how.twice { 2 } else { 1 };
        let mut last = None;
        for _ in 0..times {
            last = Some(self.send(&body).await);
        }
        (
            last.unwrap_or_else(|| Delivered {
                attempts: vec![],
                status: None,
            }),
            part,
        )
    }

    /// Delivers a notification whose body is `body` (already made), signed
    /// like Intercom — or, for tests of a forgery, with `signature`.
    pub async fn deliver_raw(&self, body: Vec<u8>, signature: Option<String>) -> Delivered {
        let sig = signature.unwrap_or_else(|| self.sign(&body));
        let bytes = move |_| body.clone();
        let headers = move |_, _: &[u8]| vec![("x-hub-signature".to_owned(), sig.clone())];
        deliver(
            &self.inner.http,
            &self.webhook(),
            &bytes,
            &headers,
            &retried,
            1,
        )
        .await
    }

    async fn send(&self, body: &(dyn Fn(u32) -> Vec<u8> + Sync)) -> Delivered {
        let headers = |_, bytes: &[u8]| vec![("x-hub-signature".to_owned(), self.sign(bytes))];
        deliver(
            &self.inner.http,
            &self.webhook(),
            body,
            &headers,
            &retried,
            8,
        )
        .await
    }

    /// `sha1=<hex of HMAC-SHA1(client secret, body)>`.
    pub fn sign(&self, body: &[u8]) -> String {
        let Ok(mut mac) =
            Hmac::<sha1::Sha1>::new_from_slice(self.inner.config.client_secret.as_bytes())
        else {
            return String::new();
        };
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha1={hex}")
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

/// Intercom retries what did not answer 2xx (a 4xx as well, as far as documented).
fn retried(status: u16) -> bool {
    status == 429 || status >= 500
}

/// A demo's tap: `{"phone", "text"}`; answers when the webhook was delivered.
async fn tap_handler(State(me): State<Intercom>, Json(v): Json<serde_json::Value>) -> Response {
    let (Some(phone), Some(text)) = (
        v.get("phone").and_then(|p| p.as_str()),
        v.get("text").and_then(|t| t.as_str()),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"phone\": \"+...\", \"text\": \"...\"}\n",
        )
            .into_response();
    };
    let (delivered, part) = me.tap(phone, text, Tap::default()).await;
    Json(json!({"part": part, "delivered": delivered})).into_response()
}

async fn contact(
    State(me): State<Intercom>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = &me.inner;
    if !super::bearer_is(&headers, &s.config.token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"type": "error.list", "errors": [{"code": "unauthorized", "message": "Access Token Invalid"}]})),
        )
            .into_response();
    }
    s.faults.asked().await;
    if s.faults.lookup_fails() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"type": "error.list"})),
        )
            .into_response();
    }
    let phone = match s.workspace.lock() {
        Ok(w) => w.phones.get(&id).cloned(),
        Err(p) => p.into_inner().phones.get(&id).cloned(),
    };
    match phone {
        Some(phone) => Json(json!({"type": "contact", "id": id, "role": "lead", "phone": phone,
                                   "name": null, "email": null}))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"type": "error.list", "errors": [{"code": "not_found", "message": "User Not Found"}]})),
        )
            .into_response(),
    }
}

/// For the Octopods stand-in: answers `intercom_conversation_id` for a phone.
pub(crate) type Conversations = Arc<dyn Fn(&str) -> String + Send + Sync>;

impl Intercom {
    pub(crate) fn conversations(&self) -> Conversations {
        let me = self.clone();
        Arc::new(move |phone: &str| me.conversation_for(phone).1)
    }
}
