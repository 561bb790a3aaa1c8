//! The dead-letter pages and actions: groups and lists from the console's
//! [`Index`](super::dead::Index), one message read from the queue, replay
//! and export-then-purge as a plan (dry run) then a confirmed
//! [`Action`](super::dead::Action), and the backups' downloads.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{
    ACTIONS_KEPT, OperatorPost, PLAN_TTL, Post, Shared, UserPost,
    auth::Who,
    dead::{self, Action, Kind, Plan, State as ActionState},
    mask, page, page_with,
    pages::{self, ListQuery},
    source_of,
};
use crate::{
    observe::logging::escape,
    ops::dlq::{DeadMessage, Filter, message::table_to_json},
};

/// How long a confirmed action waits for another dlq command on the queue.
const ACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

pub(super) async fn dead_groups(
    State(app): Shared,
    who: Who,
    Query(q): Query<ListQuery>,
) -> Response {
    let source = source_of(Some(&q.source));
    match app.index(source, false).await {
        Ok((index, stale)) => page(pages::groups(&who, &index, stale)),
        Err(e) => busy(&who, e),
    }
}

pub(super) fn busy(who: &Who, e: anyhow::Error) -> Response {
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

pub(super) async fn refresh(State(app): Shared, Post { who, form }: UserPost) -> Response {
    let source = source_of(form.one("source"));
    match app.index(source, true).await {
        Ok(_) => {
            Redirect::to(&pages::link("/dead", &[("source", source.as_str())])).into_response()
        }
        Err(e) => busy(&who, e),
    }
}

pub(super) async fn dead_list(
    State(app): Shared,
    who: Who,
    Query(q): Query<ListQuery>,
) -> Response {
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
                && (q.group.is_empty() || g.is_some_and(|g| g.id == q.group))
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

pub(super) async fn dead_message(
    State(app): Shared,
    who: Who,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let source = source_of(q.get("source").map(String::as_str));
    let Some(print) = q.get("print").and_then(|p| u64::from_str_radix(p, 16).ok()) else {
        return (StatusCode::BAD_REQUEST, "which message? (print)\n").into_response();
    };
    let mut found = None;
    let read = crate::ops::dlq::visit(
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
        (Ok(_), Some(m)) => page(pages::dead_message(
            &who,
            source,
            &format!("{print:016x}"),
            &m,
        )),
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

pub(super) fn shown_message(d: &lapin::message::Delivery, m: &DeadMessage) -> pages::Shown {
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

pub(super) async fn replay(state: Shared, post: OperatorPost) -> Response {
    plan(state, post, Kind::Replay).await
}

pub(super) async fn purge(state: Shared, post: OperatorPost) -> Response {
    plan(state, post, Kind::Purge).await
}

/// A replay or purge asked for: its scope as a filter, counted by a dry run,
/// shown with a confirm button.
async fn plan(State(app): Shared, Post { who, form }: OperatorPost, kind: Kind) -> Response {
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
        let (index, _) = match app.index(source, false).await {
            Ok(i) => i,
            Err(e) => return busy(&who, e),
        };
        let found = index
            .find(form.one("group").unwrap_or_default())
            .and_then(|g| Some((g, index.groups.get(g)?)));
        let Some((g, group)) = found else {
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
                error_group: Some(group.error.clone()),
                prints: Some(index.prints_of(g)),
                ..Filter::default()
            },
            format!(
                "group {} × {} × {}",
                group.why.as_str(),
                group.channel_shown(),
                group.error
            ),
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

pub(super) async fn confirm(
    State(app): Shared,
    Path(id): Path<String>,
    Post { who, .. }: OperatorPost,
) -> Response {
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
    app.running.spawn(async move {
        let dir = runner.config.console.export_dir.clone();
        dead::carry_out(
            runner.config.clone(),
            action.clone(),
            dir,
            // Confirmed: better to wait for another operator's command than to fail.
            runner.config.console.lock_wait.max(ACTION_WAIT),
        )
        .await;
        runner.mark_stale(source).await;
        if let ActionState::Failed(e) = action.state() {
            warn!(user = %action.plan.user, error = %escape(&e), "console: action failed");
        }
    });
    Redirect::to(&format!("/actions/{id}")).into_response()
}

pub(super) async fn action_page(State(app): Shared, who: Who, Path(id): Path<String>) -> Response {
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

pub(super) async fn export_file(
    State(app): Shared,
    who: Who,
    Path(name): Path<String>,
) -> Response {
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
    // Streamed: a backup of 100,000 dead letters is not read into memory.
    match tokio::fs::File::open(app.config.console.export_dir.join(&name)).await {
        Ok(file) => {
            let disposition = format!("attachment; filename=\"{name}\"");
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
            let mut r = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(_) => (StatusCode::NOT_FOUND, "no such backup\n").into_response(),
    }
}
