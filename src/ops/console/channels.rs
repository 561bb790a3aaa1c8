//! The channels page and its actions: every channel's state from
//! [`crate::ops::overview`], and pause / resume / set-rate / clear appended to the
//! control stream as `channel …` does (`by` names the console user).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use tracing::info;

use super::{App, OperatorPost, Post, Shared, auth::Who, mask, page, page_with, pages};
use crate::{
    ops::control::{Change, Command},
    ops::overview,
};

pub(super) async fn channels(State(app): Shared, who: Who) -> Response {
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

/// What came back in the last day (docs/contract.md §15).
pub(super) async fn replies(State(app): Shared, who: Who) -> Response {
    let day = std::time::Duration::from_secs(24 * 3600);
    match crate::ops::replies::read(&app.config, day).await {
        Ok(s) => page(pages::replies(&who, &s)),
        Err(e) => page_with(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "Replies",
                &who,
                &format!("cannot read the prompt stream: {e:#}"),
                "/replies",
            ),
        ),
    }
}

pub(super) async fn pause(
    State(app): Shared,
    Path(name): Path<String>,
    Post { who, form }: OperatorPost,
) -> Response {
    let reason = form
        .one("reason")
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    change(&app, &who, &name, Change::Pause { reason }, "pause").await
}

pub(super) async fn resume(
    State(app): Shared,
    Path(name): Path<String>,
    Post { who, .. }: OperatorPost,
) -> Response {
    change(&app, &who, &name, Change::Resume, "resume").await
}

pub(super) async fn clear(
    State(app): Shared,
    Path(name): Path<String>,
    Post { who, .. }: OperatorPost,
) -> Response {
    change(&app, &who, &name, Change::Clear, "clear").await
}

pub(super) async fn set_rate(
    State(app): Shared,
    Path(name): Path<String>,
    Post { who, form }: OperatorPost,
) -> Response {
    let number = |k: &str| form.one(k).map(str::trim).filter(|v| !v.is_empty());
    let Some(Ok(rate)) = number("rate").map(str::parse::<f64>) else {
        return bad(&who, "set-rate needs a rate (sends per second)".into());
    };
    let burst = match number("burst").map(str::parse::<u32>) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(_)) => return bad(&who, "burst must be a whole number".into()),
    };
    change(
        &app,
        &who,
        &name,
        Change::SetRate { rate, burst },
        "set_rate",
    )
    .await
}

fn bad(who: &Who, text: String) -> Response {
    page_with(
        StatusCode::BAD_REQUEST,
        pages::message("Channels", who, &text, "/channels"),
    )
}

/// Appends `change` of channel `name` to the control stream, as `who`.
async fn change(app: &App, who: &Who, name: &str, change: Change, label: &str) -> Response {
    if app.config.channel(name).is_none() {
        return bad(who, format!("unknown channel {:?}", mask::shown(name, 200)));
    }
    let mut command = Command::new(name, change);
    command.by = format!("{} (console)", who.user);
    if let Err(e) = command.check() {
        return bad(who, e);
    }
    match app.append_control(&command).await {
        Ok(()) => {
            app.count(label);
            info!(user = %who.user, channel = %name, action = label, "console: channel command appended");
            Redirect::to("/channels").into_response()
        }
        Err(e) => page_with(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message(
                "Channels",
                who,
                &format!("the command was not written: {e:#}"),
                "/channels",
            ),
        ),
    }
}
