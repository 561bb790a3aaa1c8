//! The channels page and its actions: every channel's state from
//! [`crate::ops::overview`], and pause / resume / set-rate / clear appended to the
//! control stream as `channel …` does (`by` names the console user).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use tracing::info;

use super::{Form, Shared, auth::Who, mask, page, page_with, pages};
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

pub(super) async fn channel_action(
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
    let appended = app.append_control(&command).await;
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
