//! `octopods-worker console`: the operators' browser console, its own
//! process and port. This file owns the HTTP surface — the routes, the
//! security headers every answer carries, the console's state — and the rule
//! that a GET never changes anything. The pages: [`session`] (log in / out),
//! [`channels`] (state and control via [`crate::ops::control`]), [`letters`] (dead
//! letters over [`dead`]'s index, plans and actions), behind [`auth`] (users,
//! sessions, CSRF), rendered by [`pages`] from text [`mask`] made safe to show.

mod auth;
mod channels;
mod dead;
mod letters;
mod mask;
mod pages;
mod session;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::Markup;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use auth::hash_password;
use auth::{Auth, Who};
use dead::{Action, Index, Plan};

use crate::{config::Config, ops::dlq::Source};

/// Plans (dry runs) wait this long for their confirm.
pub(super) const PLAN_TTL: Duration = Duration::from_secs(600);
/// Finished actions kept for their pages.
pub(super) const ACTIONS_KEPT: usize = 100;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const CSS: &str = include_str!("console.css");

pub(super) struct App {
    pub(super) config: Arc<Config>,
    pub(super) auth: Auth,
    /// Each queue's index, and whether an action changed the queue since.
    indexes: tokio::sync::Mutex<HashMap<&'static str, (Arc<Index>, bool)>>,
    pub(super) plans: Mutex<HashMap<String, Plan>>,
    pub(super) actions: Mutex<Vec<(String, Arc<Action>)>>,
    /// Confirmed actions (replays, export-then-purge) run here; a shutdown
    /// lets them finish (up to [`ACTION_DRAIN`]) before the process goes.
    pub(super) running: TaskTracker,
    /// The connection and publisher channel commands are appended with,
    /// opened at the first and kept (opened again when lost).
    publisher: tokio::sync::Mutex<Option<(lapin::Connection, crate::broker::Publisher)>>,
    registry: Registry,
    counted: IntCounterVec,
}

/// How long a shutdown waits for confirmed actions still running.
const ACTION_DRAIN: Duration = Duration::from_secs(120);

/// The console, bound and ready to serve.
pub struct Console {
    listener: tokio::net::TcpListener,
    router: Router,
    running: TaskTracker,
}

impl Console {
    /// Checks the console's config (users or a token: no anonymous mode) and binds its port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let auth = Auth::new(&config.console)?;
        let registry = Registry::new();
        let counted = IntCounterVec::new(
            Opts::new(
                "octopods_console_actions_total",
                "Console actions by kind (logins, refusals, replays, purges, channel commands).",
            ),
            &["action"],
        )?;
        registry.register(Box::new(counted.clone()))?;
        let listen = config.console.listen;
        let app = Arc::new(App {
            config: Arc::new(config),
            auth,
            indexes: tokio::sync::Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            actions: Mutex::new(Vec::new()),
            running: TaskTracker::new(),
            publisher: tokio::sync::Mutex::new(None),
            registry,
            counted,
        });
        let running = app.running.clone();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("console: cannot listen on {listen}: {e}"))?;
        Ok(Self {
            listener,
            router: router(app),
            running,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(addr = %self.addr(), "console listening");
        // The client's address feeds the failure budget every way in shares.
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        // A confirmed replay or purge finishes what it started.
        self.running.close();
        if !self.running.is_empty() {
            info!(
                actions = self.running.len(),
                "console: stopping; letting confirmed actions finish"
            );
        }
        if tokio::time::timeout(ACTION_DRAIN, self.running.wait())
            .await
            .is_err()
        {
            warn!(
                unfinished = self.running.len(),
                "console: actions still running after {ACTION_DRAIN:?}; what they hold goes back to its queue"
            );
        }
        Ok(())
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/channels") }))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/channels", get(channels::channels))
        .route("/channels/{name}/pause", post(channels::pause))
        .route("/channels/{name}/resume", post(channels::resume))
        .route("/channels/{name}/clear", post(channels::clear))
        .route("/channels/{name}/set-rate", post(channels::set_rate))
        .route("/replies", get(channels::replies))
        .route("/dead", get(letters::dead_groups))
        .route("/dead/refresh", post(letters::refresh))
        .route("/dead/list", get(letters::dead_list))
        .route("/dead/message", get(letters::dead_message))
        .route("/dead/replay", post(letters::replay))
        .route("/dead/purge", post(letters::purge))
        .route("/plans/{id}/confirm", post(letters::confirm))
        .route("/actions/{id}", get(letters::action_page))
        .route("/exports/{name}", get(letters::export_file))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(256 * 1024))
        .layer(axum::middleware::from_fn_with_state(app.clone(), bearer))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(app)
}

/// The client's address (the peer's; behind a proxy, the proxy's).
pub(super) fn peer(extensions: &axum::http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// A request with `Authorization: Bearer` passes only with the right token
/// and while the token's and the client's failure budgets last; a wrong
/// token spends both, as a wrong password at the login form does.
async fn bearer(
    State(app): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from = peer(request.extensions());
    match app.auth.bearer(request.headers(), from) {
        auth::Bearer::Absent | auth::Bearer::Valid => next.run(request).await,
        auth::Bearer::Wrong => {
            app.count("login_failed");
            warn!(user = auth::TOKEN_USER, "console: wrong bearer token");
            (StatusCode::UNAUTHORIZED, "wrong token\n").into_response()
        }
        auth::Bearer::TooMany => {
            app.count("refused");
            warn!(
                user = auth::TOKEN_USER,
                "console: bearer token refused: too many failures"
            );
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "60")],
                "too many failed logins; wait a minute\n",
            )
                .into_response()
        }
    }
}

/// Every answer: no script, no framing, no sniffing, no caching, no referrer to other sites.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on the
        // console's own form posts, which the CSRF check must refuse.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

pub(super) type Shared = State<Arc<App>>;

/// A handler that takes a [`Who`] serves only the signed-in; anyone else
/// is sent to the login.
impl axum::extract::FromRequestParts<Arc<App>> for Who {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, Response> {
        app.auth
            .who(&parts.headers)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

impl App {
    /// Appends `command` to the control stream on the kept connection,
    /// opening it (again) when there is none or it was lost.
    pub(super) async fn append_control(
        &self,
        command: &crate::ops::control::Command,
    ) -> anyhow::Result<()> {
        let mut kept = self.publisher.lock().await;
        if !kept
            .as_ref()
            .is_some_and(|(conn, _)| conn.status().connected())
        {
            let conn = crate::broker::connect(&self.config.broker, "console").await?;
            let timeout = self.config.command_publish_timeout();
            let publisher = crate::broker::Publisher::open(&conn, timeout).await?;
            *kept = Some((conn, publisher));
        }
        let names = crate::broker::Names::new(&self.config.broker.prefix);
        let appended = match kept.as_ref() {
            Some((_, publisher)) => crate::ops::control::append(publisher, &names, command).await,
            None => Err(anyhow::anyhow!("no connection to the broker")),
        };
        if appended.is_err() {
            // Opened again at the next command.
            *kept = None;
        }
        appended
    }

    pub(super) fn count(&self, action: &str) {
        self.counted.with_label_values(&[action]).inc();
    }

    /// A signed-in user whose POST passes the cross-site checks (and, with
    /// `operator`, has that role); every refusal counted and logged.
    fn allowed(&self, headers: &HeaderMap, form: &Form, operator: bool) -> Result<Who, Refused> {
        let Some(who) = self.auth.who(headers) else {
            self.count("refused");
            return Err(Refused::LogIn);
        };
        if !self.auth.allows(&who, headers, form.one("csrf")) {
            self.count("refused");
            warn!(user = %who.user, "console: a cross-site or token-less POST was refused");
            return Err(Refused::CrossSite);
        }
        if operator && !who.may_change() {
            self.count("refused");
            warn!(user = %who.user, "console: a viewer tried an operator action");
            return Err(Refused::NotOperator(who));
        }
        Ok(who)
    }

    pub(super) async fn index(
        &self,
        source: Source,
        fresh: bool,
    ) -> anyhow::Result<(Arc<Index>, bool)> {
        let mut indexes = self.indexes.lock().await;
        if !fresh && let Some((i, stale)) = indexes.get(source.as_str()) {
            return Ok((i.clone(), *stale));
        }
        let index =
            Arc::new(Index::read(&self.config, source, self.config.console.lock_wait).await?);
        info!(
            queue = source.as_str(),
            messages = index.rows.len(),
            groups = index.groups.len(),
            held_ms = u64::try_from(index.took.as_millis()).unwrap_or(u64::MAX),
            "console: dead-letter snapshot read"
        );
        indexes.insert(source.as_str(), (index.clone(), false));
        Ok((index, false))
    }

    pub(super) async fn mark_stale(&self, source: Source) {
        if let Some(e) = self.indexes.lock().await.get_mut(source.as_str()) {
            e.1 = true;
        }
    }
}

/// Why a POST was refused before its handler ran; renders its answer.
pub(super) enum Refused {
    /// No session or token.
    LogIn,
    /// Not from the console's own page (origin, CSRF token).
    CrossSite,
    /// A viewer asked for an operator's action.
    NotOperator(Who),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::LogIn => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
            Refused::CrossSite => (
                StatusCode::FORBIDDEN,
                "refused: this request did not come from the console's own page\n",
            )
                .into_response(),
            Refused::NotOperator(who) => page_with(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Not allowed",
                    &who,
                    "Your role is viewer: replay, purge and channel control need operator.",
                    "/channels",
                ),
            ),
        }
    }
}

/// A state-changing request the console accepts: a signed-in user (session
/// or token) whose POST comes from the console's own page (origin, CSRF
/// token), with the operator role when `OPERATOR`; its form, parsed. A
/// handler that takes one runs only for such a request.
pub(super) struct Post<const OPERATOR: bool> {
    pub(super) who: Who,
    pub(super) form: Form,
}

/// Any signed-in user's POST.
pub(super) type UserPost = Post<false>;
/// An operator's POST (replay, purge, channel control).
pub(super) type OperatorPost = Post<true>;

impl<const OPERATOR: bool> axum::extract::FromRequest<Arc<App>> for Post<OPERATOR> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let body = axum::body::Bytes::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = Form::parse(&body);
        let who = app
            .allowed(&headers, &form, OPERATOR)
            .map_err(IntoResponse::into_response)?;
        Ok(Self { who, form })
    }
}

pub(super) fn page(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

pub(super) fn page_with(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// A urlencoded form, repeated keys kept (`print=…&print=…`).
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    pub(super) fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }
    pub(super) fn one(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub(super) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn source_of(s: Option<&str>) -> Source {
    s.and_then(Source::parse).unwrap_or_default()
}

async fn metrics(State(app): Shared) -> Response {
    let mut out = String::new();
    if prometheus::TextEncoder::new()
        .encode_utf8(&app.registry.gather(), &mut out)
        .is_err()
    {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
