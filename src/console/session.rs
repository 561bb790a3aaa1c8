//! Logging in and out: the login form, its POST (a session cookie on
//! success, counted either way), and logout.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use tracing::{info, warn};

use super::{Form, Shared, auth::Refused, mask, page, page_with, pages};
use crate::telemetry::escape;

pub(super) async fn login_page(State(app): Shared, headers: HeaderMap) -> Response {
    if app.auth.who(&headers).is_some() {
        return Redirect::to("/channels").into_response();
    }
    page(pages::login(None))
}

pub(super) async fn login(State(app): Shared, headers: HeaderMap, body: Bytes) -> Response {
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
            warn!(user = %escape(&mask::shown(name, 64)), why = ?why, "console: login refused");
            let (status, text) = match why {
                Refused::Wrong => (StatusCode::UNAUTHORIZED, "Wrong user name or password."),
                Refused::TooMany => (
                    StatusCode::UNAUTHORIZED,
                    "Too many failed logins for this name; wait a minute.",
                ),
                Refused::NoRandomness => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The console cannot open a session now: the OS gave no randomness for it.",
                ),
            };
            page_with(status, pages::login(Some(text)))
        }
    }
}

pub(super) async fn logout(State(app): Shared, headers: HeaderMap, body: Bytes) -> Response {
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
