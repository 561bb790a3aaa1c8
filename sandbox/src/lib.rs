//! `octopods-sandbox`: a stand-in for the Octopods interactive-message
//! endpoint that answers as `octopods-api.md` documents, plus scripted faults
//! (globally or per destination phone), latency, and a request log.
//!
//! Control surface, for tests and demos:
//! - `POST /_sandbox/script` `{"phone": "+1…"?, "faults": [{"kind": "outage"}, …], "repeat": 1, "for_ms": null}`
//! - `DELETE /_sandbox/script` clears every script;
//! - `GET /_sandbox/requests` lists what was received (with the auth header, for tests).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The paths and header Octopods documents (`octopods-api.md`).
mod octopods {
    pub(crate) const PATH: &str = "/api/v1/whatsapp/interactive";
    pub(crate) const MESSAGES_PATH: &str = "/api/v1/whatsapp/messages";
    pub(crate) const TEMPLATES_PATH: &str = "/api/v1/whatsapp/templates";
    pub(crate) const AUTH_HEADER: &str = "X-Octopods-Auth";
}

pub mod validate;

/// `2026-11-24T10:00:01.234Z`.
fn timestamp(t: time::OffsetDateTime) -> String {
    const MILLIS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let utc = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    utc.format(MILLIS).unwrap_or_else(|_| utc.to_string())
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    /// Delay before every answer.
    pub latency: Duration,
    /// Keys accepted; empty means any non-empty key.
    pub api_keys: Vec<String>,
    /// Requests per second accepted per API key before answering 429 with
    /// `Retry-After: 1`, as Octopods does for sustained bursts. `None`: no limit.
    pub rate_limit: Option<u32>,
    /// The template catalog; empty: `539` (body) and `540:header,body,buttons`.
    pub templates: Vec<TemplateSpec>,
    /// A sent message's status is `SENT`, then `DELIVERED` this long after
    /// the send, then `READ` after `read_after` (unless scripted).
    pub delivered_after: Duration,
    pub read_after: Duration,
}

impl Default for SandboxConfig {
    /// On a free loopback port, answering at once, any key, no rate limit,
    /// the default templates, `DELIVERED` after 300 ms and `READ` after 600 ms.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::ZERO,
            api_keys: Vec::new(),
            rate_limit: None,
            templates: Vec::new(),
            delivered_after: Duration::from_millis(300),
            read_after: Duration::from_millis(600),
        }
    }
}

/// An accepted template: its id and the sections with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub id: u64,
    pub sections: Vec<String>,
}

impl TemplateSpec {
    /// `539` or `540:header,body,buttons`.
    pub fn parse(s: &str) -> Result<TemplateSpec, String> {
        let (id, sections) = s.split_once(':').unwrap_or((s, "body"));
        let id = id
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{id:?}: a template id is a positive integer"))?;
        let sections: Vec<String> = sections.split(',').map(|x| x.trim().to_owned()).collect();
        if let Some(bad) = sections
            .iter()
            .find(|x| !["header", "body", "footer", "buttons"].contains(&x.as_str()))
        {
            return Err(format!(
                "{bad:?}: sections are header, body, footer, buttons"
            ));
        }
        Ok(TemplateSpec { id, sections })
    }

    fn default_catalog() -> Vec<TemplateSpec> {
        vec![
            TemplateSpec {
                id: 539,
                sections: vec!["body".into()],
            },
            TemplateSpec {
                id: 540,
                sections: vec!["header".into(), "body".into(), "buttons".into()],
            },
        ]
    }
}

/// A scripted answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer normally.
    Success,
    /// 400, code 1.
    MissingField,
    /// 400, code 2.
    WrongShape,
    /// 400, code 7.
    Validation,
    /// 400, code 8: the 24-hour window is closed.
    Window,
    /// 401, code 5.
    Unauthorized,
    /// 400, code 6.
    DeprecatedKey,
    /// 403, code 9.
    NotEnabled,
    /// 429 with `Retry-After` seconds (default 1).
    RateLimited { retry_after: Option<u64> },
    /// 5xx (default 503).
    Outage { status: Option<u16> },
    /// No answer for this long.
    Hang { ms: u64 },
    /// For a status poll: 200 with this status (any case, e.g. `UNKNOWN`,
    /// `FAILED`) and an optional failure reason.
    MessageStatus {
        status: String,
        #[serde(default)]
        failure_reason: Option<String>,
    },
    /// 200, queued, with this `message_id` (any text: an odd answer).
    Accepted { message_id: String },
    /// Any status and Octopods-style error body.
    Status {
        status: u16,
        error_code: Option<i64>,
        error: Option<String>,
    },
}

/// A script: faults answered in order, `repeat` rounds (0 = forever), or
/// cyclically for `for_ms` milliseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Script {
    #[serde(default)]
    pub phone: Option<String>,
    pub faults: Vec<Fault>,
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default)]
    pub for_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Script {
    pub fn for_phone(phone: &str, faults: Vec<Fault>) -> Self {
        Self {
            phone: Some(phone.into()),
            faults,
            repeat: 1,
            for_ms: None,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Recorded {
    pub seq: u64,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
    pub at: String,
    pub auth: Option<String>,
    pub phone: Option<String>,
    /// The request path (interactive or a template's).
    #[serde(default)]
    pub path: String,
    pub body: String,
    pub status: u16,
}

struct Running {
    script: Script,
    next: usize,
    rounds_left: u32,
    until: Option<Instant>,
}

impl Running {
    /// The next fault, and whether the script is used up.
    fn take(&mut self, now: Instant) -> (Option<Fault>, bool) {
        if self.script.faults.is_empty() {
            return (None, true);
        }
        if let Some(until) = self.until {
            if now >= until {
                return (None, true);
            }
            let f = self
                .script
                .faults
                .get(self.next % self.script.faults.len())
                .cloned();
            self.next += 1;
            return (f, false);
        }
        let Some(f) = self.script.faults.get(self.next).cloned() else {
            return (None, true);
        };
        self.next += 1;
        if self.next == self.script.faults.len() {
            self.next = 0;
            if self.rounds_left == 1 {
                return (Some(f), true);
            }
            self.rounds_left = self.rounds_left.saturating_sub(1);
        }
        (Some(f), false)
    }
}

struct SandboxState {
    config: SandboxConfig,
    addr: SocketAddr,
    started: Instant,
    scripts: Mutex<HashMap<Option<String>, Running>>,
    log: Mutex<Vec<Recorded>>,
    /// Messages accepted: when, and to which phone (for status polls).
    sent: Mutex<HashMap<String, (Instant, String)>>,
    per_key: Option<governor::DefaultKeyedRateLimiter<String>>,
}

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
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
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
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SandboxState {
    fn add_script(&self, script: Script) {
        let running = Running {
            next: 0,
            rounds_left: script.repeat,
            until: script
                .for_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            script,
        };
        if let Ok(mut s) = self.scripts.lock() {
            s.insert(running.script.phone.clone(), running);
        }
    }

    fn scripted(&self, phone: Option<&str>) -> Option<Fault> {
        let mut scripts = self.scripts.lock().ok()?;
        let now = Instant::now();
        // A script for this phone first, then the global one.
        for key in [phone.map(str::to_owned), None] {
            let Some(running) = scripts.get_mut(&key) else {
                continue;
            };
            let (fault, done) = running.take(now);
            if done {
                scripts.remove(&key);
            }
            if fault.is_some() {
                return fault;
            }
        }
        None
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

/// What the sandbox decided to answer.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
    hang: Option<Duration>,
}

fn error(status: u16, code: i64, text: &str) -> Answer {
    Answer {
        status,
        body: json!({"request_id": request_id(), "error_code": code, "error": text}),
        retry_after: None,
        hang: None,
    }
}

fn request_id() -> String {
    format!("req_{}", ulid::Ulid::generate())
}

fn fault_answer(fault: Fault) -> Option<Answer> {
    Some(match fault {
        // A scripted status answers a poll; for a send it is a success.
        Fault::Success | Fault::MessageStatus { .. } => return None,
        Fault::Accepted { message_id } => Answer {
            status: 200,
            body: json!({"request_id": request_id(), "message_id": message_id,
                "channel_message_id": format!("wamid.{}", ulid::Ulid::generate())}),
            retry_after: None,
            hang: None,
        },
        Fault::MissingField => error(400, 1, "ARGUMENT_MISSING: a required argument is missing"),
        Fault::WrongShape => error(400, 2, "TYPE_MISMATCH: an argument has the wrong type"),
        Fault::Validation => error(
            400,
            7,
            "VALIDATION: action.buttons: too many buttons, limit 3",
        ),
        Fault::Window => error(
            400,
            8,
            "OUTSIDE_WINDOW: the last inbound message is older than 24 hours; send a template",
        ),
        Fault::Unauthorized => error(401, 5, "UNAUTHORIZED: the API key is missing or unknown"),
        Fault::DeprecatedKey => error(400, 6, "DEPRECATED_API_KEY: this API key was revoked"),
        Fault::NotEnabled => error(
            403,
            9,
            "INTERACTIVE_NOT_ENABLED: ask Octopods support to enable the interactive API",
        ),
        Fault::RateLimited { retry_after } => Answer {
            status: 429,
            body: json!({"request_id": request_id(), "error": "Too Many Requests"}),
            retry_after: Some(retry_after.unwrap_or(1)),
            hang: None,
        },
        Fault::Outage { status } => Answer {
            status: status.unwrap_or(503),
            body: json!({"error": "Service Unavailable"}),
            retry_after: None,
            hang: None,
        },
        Fault::Hang { ms } => Answer {
            status: 504,
            body: json!({"error": "hung"}),
            retry_after: None,
            hang: Some(Duration::from_millis(ms)),
        },
        Fault::Status {
            status,
            error_code,
            error: text,
        } => Answer {
            status,
            body: json!({"request_id": request_id(), "error_code": error_code, "error": text}),
            retry_after: None,
            hang: None,
        },
    })
}

/// Octopods' own checks, in the order the docs imply.
/// The key and the per-key rate limit, as for every endpoint.
fn gate(state: &SandboxState, auth: Option<&str>) -> Option<Answer> {
    let Some(key) = auth.filter(|k| !k.is_empty()) else {
        return Some(error(
            401,
            5,
            "UNAUTHORIZED: X-Octopods-Auth header missing",
        ));
    };
    if !state.config.api_keys.is_empty() && !state.config.api_keys.iter().any(|k| k == key) {
        return Some(error(401, 5, "UNAUTHORIZED: unknown API key"));
    }
    if let Some(limiter) = &state.per_key
        && limiter.check_key(&key.to_owned()).is_err()
    {
        return Some(Answer {
            status: 429,
            body: json!({"request_id": request_id(), "error": "Too Many Requests"}),
            retry_after: Some(1),
            hang: None,
        });
    }
    None
}

/// A queued send: fresh ids.
fn accepted(state: &SandboxState, phone: &str) -> Answer {
    let id = ulid::Ulid::generate();
    let message_id = format!("msg_{id}");
    if let Ok(mut sent) = state.sent.lock() {
        sent.insert(message_id.clone(), (Instant::now(), phone.to_owned()));
    }
    Answer {
        status: 200,
        body: json!({
            "request_id": request_id(),
            "message_id": message_id,
            "message_status_url": format!("http://{}/api/v1/whatsapp/messages/{message_id}", state.addr),
            "phone_number": phone,
            "channel_message_id": format!("wamid.{id}"),
        }),
        retry_after: None,
        hang: None,
    }
}

/// `POST /api/v1/whatsapp/templates/{id}/messages`, as Octopods documents it.
fn template_answer(state: &SandboxState, auth: Option<&str>, id: &str, body: &[u8]) -> Answer {
    if let Some(refused) = gate(state, auth) {
        return refused;
    }
    let catalog = if state.config.templates.is_empty() {
        TemplateSpec::default_catalog()
    } else {
        state.config.templates.clone()
    };
    let Some(spec) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| catalog.into_iter().find(|t| t.id == id))
    else {
        return error(
            400,
            3,
            &format!("TEMPLATE_NOT_EXIST: no accepted template {id}"),
        );
    };
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return error(400, 2, "TYPE_MISMATCH: the body must be a JSON object");
    };
    let Some(phone) = req.get("destination_phone").and_then(Value::as_str) else {
        return error(400, 1, "ARGUMENT_MISSING: destination_phone");
    };
    if !validate::e164(phone) {
        return error(400, 5, "PHONE_INVALID: destination_phone is not E.164");
    }
    let body_only = spec.sections == ["body"];
    match req.get("message_variables") {
        Some(Value::Array(_)) if !body_only => {
            return error(
                400,
                2,
                "TYPE_MISMATCH: message_variables must be an object with header, body, footer and buttons for this template",
            );
        }
        Some(Value::Object(m)) => {
            if let Some(missing) = ["header", "body", "footer", "buttons"]
                .iter()
                .find(|k| !m.contains_key(**k))
            {
                return error(
                    400,
                    1,
                    &format!("ARGUMENT_MISSING: message_variables.{missing}"),
                );
            }
        }
        _ => {}
    }
    accepted(state, phone)
}

fn normal_answer(state: &SandboxState, auth: Option<&str>, body: &[u8]) -> Answer {
    if let Some(refused) = gate(state, auth) {
        return refused;
    }
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return error(400, 2, "TYPE_MISMATCH: the body must be a JSON object");
    };
    let Some(phone) = req.get("destination_phone") else {
        return error(400, 1, "ARGUMENT_MISSING: destination_phone");
    };
    let Some(phone) = phone.as_str() else {
        return error(400, 2, "TYPE_MISMATCH: destination_phone must be a string");
    };
    let Some(message) = req.get("waba_interactive_message") else {
        return error(400, 1, "ARGUMENT_MISSING: waba_interactive_message");
    };
    if let Err(refusal) = validate::interactive(message) {
        return match refusal {
            validate::Refusal::Missing(at) => error(400, 1, &format!("ARGUMENT_MISSING: {at}")),
            validate::Refusal::WrongType(at) => error(400, 2, &format!("TYPE_MISMATCH: {at}")),
            validate::Refusal::Limit(at) => error(400, 7, &format!("VALIDATION: {at}")),
        };
    }
    accepted(state, phone)
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

fn message_status(
    s: &SandboxState,
    id: &str,
    known: Option<&(Instant, String)>,
    scripted: Option<(String, Option<String>)>,
) -> Answer {
    let Some((at, phone)) = known else {
        return error(404, 10, &format!("NOT_FOUND: no message {id}"));
    };
    let age = at.elapsed();
    let stamp = |after: Duration| {
        (age >= after).then(|| {
            let t = time::OffsetDateTime::now_utc() - (age - after);
            timestamp(t)
        })
    };
    let sent_at = stamp(Duration::ZERO);
    let delivered_at = stamp(s.config.delivered_after);
    let read_at = stamp(s.config.read_after);
    let (status, failure_reason) = match scripted {
        Some(scripted) => scripted,
        None if read_at.is_some() => ("READ".to_owned(), None),
        None if delivered_at.is_some() => ("DELIVERED".to_owned(), None),
        None => ("SENT".to_owned(), None),
    };
    Answer {
        status: 200,
        body: json!({"request_id": request_id(), "message_id": id, "status": status,
                     "phone_number": phone, "sent_at": sent_at, "delivered_at": delivered_at,
                     "read_at": read_at, "failure_reason": failure_reason}),
        retry_after: None,
        hang: None,
    }
}

fn record(
    s: &SandboxState,
    arrived: Instant,
    auth: Option<String>,
    phone: Option<String>,
    path: String,
    body: &str,
    status: u16,
) {
    if let Ok(mut log) = s.log.lock() {
        let seq = u64::try_from(log.len()).unwrap_or(u64::MAX);
        log.push(Recorded {
            seq,
            at_ms: u64::try_from(arrived.duration_since(s.started).as_millis()).unwrap_or(u64::MAX),
            at: timestamp(time::OffsetDateTime::now_utc()),
            auth,
            phone,
            path,
            body: body.to_owned(),
            status,
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn script(faults: Vec<Fault>, repeat: u32) -> Running {
        Running {
            script: Script {
                phone: None,
                faults,
                repeat,
                for_ms: None,
            },
            next: 0,
            rounds_left: repeat,
            until: None,
        }
    }

    #[test]
    fn script_answers_in_order_then_ends() {
        let mut r = script(vec![Fault::Window, Fault::NotEnabled], 1);
        let now = Instant::now();
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::NotEnabled), true));
    }

    #[test]
    fn script_repeats_rounds() {
        let mut r = script(vec![Fault::Window], 3);
        let now = Instant::now();
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::Window), false));
        assert_eq!(r.take(now), (Some(Fault::Window), true));
    }

    #[test]
    fn script_with_repeat_zero_never_ends() {
        let mut r = script(vec![Fault::Window], 0);
        for _ in 0..100 {
            assert!(!r.take(Instant::now()).1);
        }
    }

    #[test]
    fn faults_deserialize_from_json() {
        let s: Script = serde_json::from_value(json!({"phone": "+15551234567",
            "faults": [{"kind": "outage"}, {"kind": "rate_limited", "retry_after": 2}]}))
        .unwrap();
        assert_eq!(
            s.faults[1],
            Fault::RateLimited {
                retry_after: Some(2)
            }
        );
        assert_eq!(s.repeat, 1);
    }
}
