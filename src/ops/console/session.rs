//! Logging in and out: the login form, its POST (a session cookie on
//! success, counted either way), and logout.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use tracing::{info, warn};

use super::{Form, Shared, UserPost, auth::Refused, page, page_with, pages};

pub(super) async fn login_page(State(app): Shared, headers: HeaderMap) -> Response {
    if app.auth.who(&headers).is_some() {
        return Redirect::to("/channels").into_response();
    }
    page(pages::login(None))
}

pub(super) async fn login(
    State(app): Shared,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    if !app.auth.same_site(&headers) {
        app.count("refused");
        return (StatusCode::FORBIDDEN, "refused: cross-site login\n").into_response();
    }
    let form = Form::parse(&body);
    let name = form.one("name").unwrap_or_default();
    match app
        .auth
        .login(
            name,
            form.one("password").unwrap_or_default(),
            super::peer(&extensions),
        )
        .await
    {
        Ok(cookie) => {
            app.count("login");
            info!(
                user = app.auth.known(name).unwrap_or("?"),
                "console: logged in"
            );
            let mut r = Redirect::to("/channels").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(why) => {
            app.count("login_failed");
            // What was typed is logged only when it names a known user: a
            // password typed into the name field must not reach the log.
            let user = app.auth.known(name).unwrap_or("unknown name");
            warn!(user, why = ?why, "console: login refused");
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

pub(super) async fn logout(State(app): Shared, headers: HeaderMap, _: UserPost) -> Response {
    let cookie = app.auth.logout(&headers);
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
