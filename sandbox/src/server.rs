//! The HTTP server: Octopods' routes, the `/_sandbox` control routes, and
//! the constant-answer stand-in for benchmarks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    SandboxConfig,
    answers::{Answer, fault_answer, gate, message_status, normal_answer, template_answer},
    api as octopods,
    script::{Fault, Script},
    state::{Recorded, SandboxState, record},
};

/// A running sandbox.
pub struct Sandbox {
    state: Arc<SandboxState>,
    stop: CancellationToken,
}

impl Sandbox {
    pub async fn start(config: SandboxConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxState {
            addr,
            started: Instant::now(),
            scripts: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            sent: Mutex::new(HashMap::new()),
            per_key: config
                .rate_limit
                .and_then(std::num::NonZeroU32::new)
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))),
            conversations: Mutex::new(None),
            config,
        });
        let app = Router::new()
            .route(octopods::PATH, post(interactive_handler))
            .route(
                "/api/v1/whatsapp/templates/{id}/messages",
                post(template_handler),
            )
            .route(
                "/_sandbox/script",
                post(script_handler).delete(clear_handler),
            )
            .route("/api/v1/whatsapp/messages/{id}", get(status_handler))
            .route("/_sandbox/requests", get(requests_handler))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        spawn(listener, app, "sandbox", stop.clone());
        Ok(Self { state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// Milliseconds since the sandbox started: the clock of [`Recorded::at_ms`].
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.state.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn script(&self, script: Script) {
        self.state.add_script(script);
    }

    pub fn clear_scripts(&self) {
        if let Ok(mut s) = self.state.scripts.lock() {
            s.clear();
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests for one destination phone.
    pub fn requests_for(&self, phone: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.phone.as_deref() == Some(phone))
            .collect()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Opens a conversation in `intercom` for every message sent, as
    /// Octopods does for a workspace connected to Intercom: the status poll
    /// then answers its `intercom_conversation_id`.
    pub fn open_conversations_in(&self, intercom: &crate::inbox::Intercom) {
        if let Ok(mut c) = self.state.conversations.lock() {
            *c = Some(intercom.conversations());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn script_handler(
    State(s): State<Arc<SandboxState>>,
    Json(script): Json<Script>,
) -> StatusCode {
    s.add_script(script);
    StatusCode::NO_CONTENT
}

async fn clear_handler(State(s): State<Arc<SandboxState>>) -> StatusCode {
    if let Ok(mut scripts) = s.scripts.lock() {
        scripts.clear();
    }
    StatusCode::NO_CONTENT
}

async fn requests_handler(State(s): State<Arc<SandboxState>>) -> Json<Vec<Recorded>> {
    Json(s.log.lock().map(|l| l.clone()).unwrap_or_default())
}

async fn interactive_handler(
    State(s): State<Arc<SandboxState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(&s, &headers, &body, octopods::PATH.to_owned(), |auth| {
        normal_answer(&s, auth, &body)
    })
    .await
}

/// `GET /api/v1/whatsapp/messages/{id}`: the status moves with time, or as
/// scripted for the message's phone.
async fn status_handler(
    State(s): State<Arc<SandboxState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("{}/{id}", octopods::MESSAGES_PATH);
    let known = s.sent.lock().ok().and_then(|m| m.get(&id).cloned());
    let phone = known.as_ref().map(|(_, p)| p.clone());
    let auth = headers
        .get(octopods::AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = match s.scripted(phone.as_deref()) {
        Some(Fault::MessageStatus {
            status,
            failure_reason,
        }) => message_status(&s, &id, known.as_ref(), Some((status, failure_reason))),
        Some(other) => {
            fault_answer(other).unwrap_or_else(|| message_status(&s, &id, known.as_ref(), None))
        }
        None => gate(&s, auth.as_deref())
            .unwrap_or_else(|| message_status(&s, &id, known.as_ref(), None)),
    };
    record(&s, Instant::now(), auth, phone, path, "", answer.status);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.body)).into_response()
}

async fn template_handler(
    State(s): State<Arc<SandboxState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("{}/{id}/messages", octopods::TEMPLATES_PATH);
    respond(&s, &headers, &body, path, |auth| {
        template_answer(&s, auth, &id, &body)
    })
    .await
}

/// Records the request, answers a scripted fault for its phone or `normal`.
async fn respond(
    s: &SandboxState,
    headers: &HeaderMap,
    body: &Bytes,
    path: String,
    normal: impl FnOnce(Option<&str>) -> Answer,
) -> Response {
    let arrived = Instant::now();
    let auth = headers
        .get(octopods::AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let phone = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("destination_phone")?.as_str().map(str::to_owned));
    let answer = s
        .scripted(phone.as_deref())
        .and_then(fault_answer)
        .unwrap_or_else(|| normal(auth.as_deref()));
    record(
        s,
        arrived,
        auth,
        phone,
        path,
        &String::from_utf8_lossy(body),
        answer.status,
    );
    let delay = answer.hang.unwrap_or(s.config.latency);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(answer.body)).into_response();
    if let Some(secs) = answer.retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        response.headers_mut().insert("retry-after", v);
    }
    response
}

/// Serves `app` on `listener` in a task until `stop` is cancelled (every
/// stand-in of this crate runs so).
pub(crate) fn spawn(
    listener: TcpListener,
    app: Router,
    what: &'static str,
    stop: CancellationToken,
) {
    let stopped = stop;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}

/// Runs a sandbox until `stop` is cancelled (the CLI command).
/// A constant-answer stand-in for benchmarks: every request gets the same
/// 200 success body at once — no parsing, no checks, no log — so the
/// benchmark measures the worker and the broker, not the stand-in.
pub async fn constant(listen: SocketAddr, stop: CancellationToken) -> std::io::Result<()> {
    let body = Bytes::from_static(
        br#"{"request_id":"req_bench","message_id":"msg_bench","message_status_url":"http://127.0.0.1/api/v1/whatsapp/messages/msg_bench","phone_number":"+15550000000","channel_message_id":"wamid.bench"}"#,
    );
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    });
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "constant sandbox listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

pub async fn run(config: SandboxConfig, stop: CancellationToken) -> std::io::Result<()> {
    let sandbox = Sandbox::start(config).await?;
    tracing::info!(url = %sandbox.url(), "sandbox listening: POST {}", octopods::PATH);
    stop.cancelled().await;
    sandbox.stop();
    Ok(())
}
