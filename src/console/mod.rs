//! `octopods-worker console`: the operators' browser console, its own
//! process and port. It owns the HTTP surface — routes, the security headers
//! every answer carries, and the rule that a GET never changes anything;
//! what it shows and does lives in [`dead`] (dead letters: index, replay,
//! export-then-purge), [`crate::overview`] and [`crate::control`] (channels),
//! behind [`auth`] (users, sessions, CSRF), rendered by [`pages`] from text
//! [`mask`] made safe to show.

mod auth;
mod dead;
mod mask;
mod pages;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::Markup;
use prometheus::{IntCounterVec, Opts, Registry};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::hash_password;
use auth::{Auth, Refused, Who};
use dead::{Action, Index, Kind, Plan, State as ActionState};
use pages::ListQuery;

use crate::{
    broker::{self, Names, Publisher},
    config::Config,
    control::{self, Change, Command},
    dlq::{DeadMessage, Filter, Source, message::table_to_json},
    overview,
    telemetry::escape,
};

/// Plans (dry runs) wait this long for their confirm.
const PLAN_TTL: Duration = Duration::from_secs(600);
/// Finished actions kept for their pages.
const ACTIONS_KEPT: usize = 100;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const CSS: &str = include_str!("console.css");

struct App {
    config: Arc<Config>,
    auth: Auth,
    /// Each queue's index, and whether an action changed the queue since.
    indexes: tokio::sync::Mutex<HashMap<&'static str, (Arc<Index>, bool)>>,
    plans: Mutex<HashMap<String, Plan>>,
    actions: Mutex<Vec<(String, Arc<Action>)>>,
    registry: Registry,
    counted: IntCounterVec,
}

/// The console, bound and ready to serve.
pub struct Console {
    listener: tokio::net::TcpListener,
    router: Router,
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
            registry,
            counted,
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("console: cannot listen on {listen}: {e}"))?;
        Ok(Self {
            listener,
            router: router(app),
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
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/channels") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/channels", get(channels))
        .route("/channels/{name}/{action}", post(channel_action))
        .route("/dead", get(dead_groups))
        .route("/dead/refresh", post(refresh))
        .route("/dead/list", get(dead_list))
        .route("/dead/message", get(dead_message))
        .route("/dead/replay", post(|s, h, b| plan(s, h, b, Kind::Replay)))
        .route("/dead/purge", post(|s, h, b| plan(s, h, b, Kind::Purge)))
        .route("/plans/{id}/confirm", post(confirm))
        .route("/actions/{id}", get(action_page))
        .route("/exports/{name}", get(export_file))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(256 * 1024))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(app)
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

type Shared = State<Arc<App>>;

impl App {
    fn count(&self, action: &str) {
        self.counted.with_label_values(&[action]).inc();
    }

    /// The signed-in user, or the answer for one who is not.
    fn who(&self, headers: &HeaderMap) -> Result<Who, Box<Response>> {
        self.auth
            .who(headers)
            .ok_or_else(|| Box::new(Redirect::to("/login").into_response()))
    }

    /// A signed-in user whose POST passes the cross-site checks (and, with
    /// `operator`, has that role).
    fn allowed(
        &self,
        headers: &HeaderMap,
        form: &Form,
        operator: bool,
    ) -> Result<Who, Box<Response>> {
        let Some(who) = self.auth.who(headers) else {
            self.count("refused");
            return Err(Box::new(
                (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
            ));
        };
        if !self.auth.allows(&who, headers, form.one("csrf")) {
            self.count("refused");
            warn!(user = %who.user, "console: a cross-site or token-less POST was refused");
            return Err(Box::new(
                (
                    StatusCode::FORBIDDEN,
                    "refused: this request did not come from the console's own page\n",
                )
                    .into_response(),
            ));
        }
        if operator && !who.may_change() {
            self.count("refused");
            warn!(user = %who.user, "console: a viewer tried an operator action");
            return Err(Box::new(page_with(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Not allowed",
                    &who,
                    "Your role is viewer: replay, purge and channel control need operator.",
                    "/channels",
                ),
            )));
        }
        Ok(who)
    }

    async fn index(&self, source: Source, fresh: bool) -> anyhow::Result<(Arc<Index>, bool)> {
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
            held_ms = index.took.as_millis() as u64,
            "console: dead-letter snapshot read"
        );
        indexes.insert(source.as_str(), (index.clone(), false));
        Ok((index, false))
    }

    async fn mark_stale(&self, source: Source) {
        if let Some(e) = self.indexes.lock().await.get_mut(source.as_str()) {
            e.1 = true;
        }
    }
}

fn page(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn page_with(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// A urlencoded form, repeated keys kept (`print=…&print=…`).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }
    fn one(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn source_of(s: Option<&str>) -> Source {
    s.and_then(Source::parse).unwrap_or_default()
}

async fn login_page(State(app): Shared, headers: HeaderMap) -> Response {
    if app.auth.who(&headers).is_some() {
        return Redirect::to("/channels").into_response();
    }
    page(pages::login(None))
}

async fn login(State(app): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if !app.auth.same_site(&headers) {
        app.count("refused");
        return (StatusCode::FORBIDDEN, "refused: cross-site login\n").into_response();
    }
    let form = Form::parse(&body);
    let name = form.one("name").unwrap_or_default();
    match app
        .auth
        .login(name, form.one("password").unwrap_or_default())
        .await
    {
        Ok(cookie) => {
            app.count("login");
            info!(user = %escape(name), "console: logged in");
            let mut r = Redirect::to("/channels").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(why) => {
            app.count("login_failed");
            warn!(user = %escape(&mask::shown(name, 64)), too_many = why == Refused::TooMany, "console: login refused");
            let text = match why {
                Refused::Wrong => "Wrong user name or password.",
                Refused::TooMany => "Too many failed logins for this name; wait a minute.",
            };
            page_with(StatusCode::UNAUTHORIZED, pages::login(Some(text)))
        }
    }
}

async fn logout(State(app): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = app.allowed(&headers, &Form::parse(&body), false) {
        return *r;
    }
    let cookie = app.auth.logout(&headers);
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn channels(State(app): Shared, headers: HeaderMap) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    match overview::read(&app.config).await {
        Ok(o) => page(pages::channels(&who, &o)),
        Err(e) => page_with(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "Channels",
                &who,
                &format!("cannot read the channels: {e:#}"),
                "/channels",
            ),
        ),
    }
}

async fn channel_action(
    State(app): Shared,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let who = match app.allowed(&headers, &form, true) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let bad = |text: String| {
        page_with(
            StatusCode::BAD_REQUEST,
            pages::message("Channels", &who, &text, "/channels"),
        )
    };
    if app.config.channel(&name).is_none() {
        return bad(format!("unknown channel {:?}", mask::shown(&name, 200)));
    }
    let number = |k: &str| form.one(k).map(str::trim).filter(|v| !v.is_empty());
    let change = match action.as_str() {
        "pause" => Change::Pause {
            reason: form
                .one("reason")
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        },
        "resume" => Change::Resume,
        "clear" => Change::Clear,
        "set-rate" => {
            let Some(Ok(rate)) = number("rate").map(str::parse::<f64>) else {
                return bad("set-rate needs a rate (sends per second)".into());
            };
            let burst = match number("burst").map(str::parse::<u32>) {
                None => None,
                Some(Ok(b)) => Some(b),
                Some(Err(_)) => return bad("burst must be a whole number".into()),
            };
            Change::SetRate { rate, burst }
        }
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    let mut command = Command::new(&name, change);
    command.by = format!("{} (console)", who.user);
    if let Err(e) = command.check() {
        return bad(e);
    }
    let names = Names::new(&app.config.broker.prefix);
    let appended = async {
        let conn = broker::connect(&app.config.broker, "console").await?;
        let publisher = Publisher::open(&conn, app.config.command_publish_timeout()).await?;
        control::append(&publisher, &names, &command).await?;
        drop(conn.close(200, "OK".into()).await);
        anyhow::Ok(())
    }
    .await;
    let label = action.replace('-', "_");
    match appended {
        Ok(()) => {
            app.count(&label);
            info!(user = %who.user, channel = %name, action = %action, "console: channel command appended");
            Redirect::to("/channels").into_response()
        }
        Err(e) => page_with(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "Channels",
                &who,
                &format!("the command was not written: {e:#}"),
                "/channels",
            ),
        ),
    }
}

async fn dead_groups(
    State(app): Shared,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let source = source_of(Some(&q.source));
    match app.index(source, false).await {
        Ok((index, stale)) => page(pages::groups(&who, &index, stale)),
        Err(e) => busy(&who, e),
    }
}

fn busy(who: &Who, e: anyhow::Error) -> Response {
    page_with(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            "Dead letters",
            who,
            &format!("cannot read the queue now: {e:#}"),
            "/dead",
        ),
    )
}

async fn refresh(State(app): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let who = match app.allowed(&headers, &form, false) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let source = source_of(form.one("source"));
    match app.index(source, true).await {
        Ok(_) => {
            Redirect::to(&pages::link("/dead", &[("source", source.as_str())])).into_response()
        }
        Err(e) => busy(&who, e),
    }
}

async fn dead_list(State(app): Shared, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let source = source_of(Some(&q.source));
    let (index, stale) = match app.index(source, false).await {
        Ok(i) => i,
        Err(e) => return busy(&who, e),
    };
    let now = OffsetDateTime::now_utc();
    let older = humantime::parse_duration(q.older_than.trim()).ok();
    let matching: Vec<&dead::Row> = index
        .rows
        .iter()
        .filter(|r| {
            let g = index.groups.get(r.group);
            (q.reason.is_empty() || g.is_some_and(|g| g.why.as_str() == q.reason))
                && (q.error.is_empty() || g.is_some_and(|g| g.error == q.error))
                && (q.channel.is_empty()
                    || g.is_some_and(|g| g.channel.as_deref().unwrap_or("-") == q.channel))
                && (q.job_id.is_empty()
                    || r.job_id
                        .as_deref()
                        .is_some_and(|j| j.contains(q.job_id.trim())))
                && older.is_none_or(|age| {
                    r.failed_at
                        .is_some_and(|at| crate::clock::between(at, now) >= age)
                })
        })
        .collect();
    let total = matching.len();
    let pages_n = total.div_ceil(pages::PAGE).max(1);
    let page_i = q.page.min(pages_n.saturating_sub(1));
    let rows: Vec<&dead::Row> = matching
        .into_iter()
        .skip(page_i.saturating_mul(pages::PAGE))
        .take(pages::PAGE)
        .collect();
    page(pages::list(&who, &index, stale, &q, &rows, total))
}

async fn dead_message(
    State(app): Shared,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let source = source_of(q.get("source").map(String::as_str));
    let Some(print) = q.get("print").and_then(|p| u64::from_str_radix(p, 16).ok()) else {
        return (StatusCode::BAD_REQUEST, "which message? (print)\n").into_response();
    };
    let mut found = None;
    let read = crate::dlq::visit(
        &app.config,
        source,
        app.config.console.lock_wait,
        |d, m: DeadMessage| {
            if m.print != print {
                return true;
            }
            found = Some(shown_message(d, &m));
            false
        },
    )
    .await;
    match (read, found) {
        (Err(e), _) => busy(&who, e),
        (Ok(_), Some(m)) => page(pages::dead_message(&who, source, &m)),
        (Ok(_), None) => page_with(
            StatusCode::NOT_FOUND,
            pages::message(
                "Dead letter",
                &who,
                "This dead letter is no longer in the queue (replayed or purged since the snapshot).",
                &pages::link("/dead", &[("source", source.as_str())]),
            ),
        ),
    }
}

fn shown_message(d: &lapin::message::Delivery, m: &DeadMessage) -> pages::Shown {
    let text = |s: &str| mask::shown(s, mask::FIELD);
    let mut summary = vec![
        ("job id", text(m.job_id.as_deref().unwrap_or("-"))),
        ("channel", text(m.channel.as_deref().unwrap_or("-"))),
        ("reason", m.why.as_str().to_owned()),
        ("error", text(&m.error)),
        ("attempts", m.attempts.to_string()),
        ("replays", m.replays.to_string()),
    ];
    summary.push((
        "failed at",
        m.failed_at
            .map(crate::events::timestamp)
            .unwrap_or_else(|| "-".into()),
    ));
    let headers = d
        .properties
        .headers()
        .as_ref()
        .map(|t| {
            table_to_json(t)
                .as_object()
                .map(|o| {
                    o.iter()
                        .take(200)
                        .map(|(k, v)| {
                            let value = if mask::secret_header(k) {
                                "[redacted]".to_owned()
                            } else {
                                match v {
                                    serde_json::Value::String(s) => text(s),
                                    other => text(&other.to_string()),
                                }
                            };
                            (mask::shown(k, 256), value)
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    pages::Shown {
        summary,
        headers,
        body: mask::body(&d.data),
        routing_key: text(d.routing_key.as_str()),
    }
}

/// A replay or purge asked for: its scope as a filter, counted by a dry run,
/// shown with a confirm button.
async fn plan(State(app): Shared, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let form = Form::parse(&body);
    let who = match app.allowed(&headers, &form, true) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let source = source_of(form.one("source"));
    let back = pages::link("/dead", &[("source", source.as_str())]);
    let selected: BTreeSet<u64> = form
        .all("print")
        .filter_map(|p| u64::from_str_radix(p, 16).ok())
        .collect();
    let (filter, what) = if !selected.is_empty() {
        let n = selected.len();
        (
            Filter {
                prints: Some(selected),
                ..Filter::default()
            },
            format!("{n} selected"),
        )
    } else {
        let key = dead::GroupKey {
            reason: form.one("reason").unwrap_or_default().into(),
            channel: form.one("channel").unwrap_or_default().into(),
            error: form.one("error").unwrap_or_default().into(),
        };
        let (index, _) = match app.index(source, false).await {
            Ok(i) => i,
            Err(e) => return busy(&who, e),
        };
        let Some(g) = index.find(&key) else {
            return page_with(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Nothing chosen",
                    &who,
                    "Choose messages, or a group of the current snapshot (refresh if it changed).",
                    &back,
                ),
            );
        };
        (
            Filter {
                error_group: Some(key.error.clone()),
                prints: Some(index.prints_of(g)),
                ..Filter::default()
            },
            format!("group {} × {} × {}", key.reason, key.channel, key.error),
        )
    };
    let mut plan = Plan {
        kind,
        source,
        filter,
        what,
        user: who.user.clone(),
        dry_run: Default::default(),
        made: Instant::now(),
    };
    match dead::dry_run(&app.config, &plan, app.config.console.lock_wait).await {
        Ok(s) => plan.dry_run = s,
        Err(e) => return busy(&who, e),
    }
    app.count(&format!("{}_dry_run", kind.as_str()));
    info!(user = %who.user, action = kind.as_str(), scope = %escape(&plan.what), would = plan.dry_run.acted, "console: dry run");
    let id = ulid::Ulid::generate().to_string().to_lowercase();
    let shown = pages::plan(&who, &id, &plan, app.config.dlq.max_replays);
    if let Ok(mut plans) = app.plans.lock() {
        plans.retain(|_, p| p.made.elapsed() < PLAN_TTL);
        plans.insert(id, plan);
    }
    page(shown)
}

async fn confirm(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let who = match app.allowed(&headers, &Form::parse(&body), true) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let plan = app.plans.lock().ok().and_then(|mut p| {
        let mine = p
            .get(&id)
            .is_some_and(|p| p.user == who.user && p.made.elapsed() < PLAN_TTL);
        if mine { p.remove(&id) } else { None }
    });
    let Some(plan) = plan else {
        return page_with(
            StatusCode::NOT_FOUND,
            pages::message(
                "No such plan",
                &who,
                "This dry run expired, was confirmed already, or is someone else's: start again.",
                "/dead",
            ),
        );
    };
    let source = plan.source;
    app.count(plan.kind.as_str());
    info!(user = %who.user, action = plan.kind.as_str(), scope = %escape(&plan.what), "console: confirmed");
    let action = Arc::new(Action {
        plan,
        started: OffsetDateTime::now_utc(),
        state: Mutex::new(ActionState::Running {
            step: "starting",
            seen: 0,
            done: 0,
        }),
    });
    if let Ok(mut all) = app.actions.lock() {
        if all.len() >= ACTIONS_KEPT {
            all.retain(|(_, a)| matches!(a.state(), ActionState::Running { .. }));
        }
        all.push((id.clone(), action.clone()));
    }
    let runner = app.clone();
    tokio::spawn(async move {
        let dir = runner.config.console.export_dir.clone();
        dead::carry_out(
            runner.config.clone(),
            action.clone(),
            dir,
            runner.config.console.lock_wait,
        )
        .await;
        runner.mark_stale(source).await;
        if let ActionState::Failed(e) = action.state() {
            warn!(user = %action.plan.user, error = %escape(&e), "console: action failed");
        }
    });
    Redirect::to(&format!("/actions/{id}")).into_response()
}

async fn action_page(State(app): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let found = app
        .actions
        .lock()
        .ok()
        .and_then(|a| a.iter().find(|(i, _)| *i == id).map(|(_, a)| a.clone()));
    let Some(action) = found else {
        return (StatusCode::NOT_FOUND, "no such action\n").into_response();
    };
    let (markup, running) = pages::action(&who, &action);
    let mut r = page(markup);
    if running {
        r.headers_mut()
            .insert("refresh", HeaderValue::from_static("1"));
    }
    r
}

async fn export_file(State(app): Shared, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let who = match app.who(&headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !who.may_change() {
        return (StatusCode::FORBIDDEN, "backups are for operators\n").into_response();
    }
    // Only names the console writes: no path, no traversal.
    let ok = name.starts_with("dlq-")
        && name.ends_with(".jsonl")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.contains("..");
    if !ok {
        return (StatusCode::NOT_FOUND, "no such backup\n").into_response();
    }
    match tokio::fs::read(app.config.console.export_dir.join(&name)).await {
        Ok(bytes) => {
            let disposition = format!("attachment; filename=\"{name}\"");
            let mut r = ([(header::CONTENT_TYPE, "application/x-ndjson")], bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(_) => (StatusCode::NOT_FOUND, "no such backup\n").into_response(),
    }
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
