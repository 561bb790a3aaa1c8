//! The operators' console in a real browser (chromium over WebDriver) and
//! through plain HTTP: log in, channels, dead letters by cause, replay and
//! export-then-purge on the real broker, roles, cross-site requests, and
//! dead letters written to attack the page.

use std::time::Duration;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use octopods_worker::ops::console::{Console, hash_password};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

pub(crate) const ANA: (&str, &str) = ("ana", "ana-operator-password");
pub(crate) const VIC: (&str, &str) = ("vic", "vic-viewer-password");

pub(crate) struct ConsoleApp {
    pub(crate) app: TestApp,
    pub(crate) base: String,
    pub(crate) exports: tempfile::TempDir,
    stop: CancellationToken,
}

pub(crate) async fn spawn_console(test: &str) -> ConsoleApp {
    spawn_console_with(test, "", "").await
}

/// A console whose `[console]` table also has `keys`, with `users` (more
/// `[[console.users]]` tables) after ana and vic.
pub(crate) async fn spawn_console_with(test: &str, keys: &str, users: &str) -> ConsoleApp {
    let exports = tempfile::tempdir().expect("tempdir");
    let users = format!(
        "\n[console]\nlisten = \"127.0.0.1:0\"\nexport_dir = \"{}\"\nlock_wait = \"20s\"\n{keys}\n\
         [[console.users]]\nname = \"{}\"\nrole = \"operator\"\npassword_hash = \"{}\"\n\
         [[console.users]]\nname = \"{}\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n{users}",
        exports.path().display(),
        ANA.0,
        hash_password(ANA.1).expect("hash"),
        VIC.0,
        hash_password(VIC.1).expect("hash"),
    );
    let app = spawn_with(
        test,
        Options {
            extra_toml: format!("{TEST_RETRY}{users}"),
            ..Options::default()
        },
    )
    .await;
    let console = Console::build(app.config.clone())
        .await
        .expect("console builds");
    let base = format!("http://{}", console.addr());
    let stop = CancellationToken::new();
    tokio::spawn(console.run(stop.clone()));
    ConsoleApp {
        app,
        base,
        exports,
        stop,
    }
}

impl ConsoleApp {
    /// Publishes a dead letter as the worker writes one, straight into
    /// `<prefix>.dead`: a valid job (so a replay sends it) with its record.
    pub(crate) async fn dead_letter(&self, job: &Value, reason: &str, error: &str) {
        let mut h = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        h.insert("x-octopods-reason".into(), text(reason));
        h.insert("x-octopods-channel".into(), text("store-eu"));
        h.insert("x-octopods-error".into(), text(error));
        h.insert("x-octopods-attempts".into(), AMQPValue::LongLongInt(1));
        h.insert("x-octopods-failed-at".into(), text("2026-12-01T10:00:00Z"));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(h);
        let body = serde_json::to_vec(job).expect("json");
        self.app
            .publish_raw("", &self.app.queue("dead"), &body, props)
            .await;
    }

    /// A browser signed in as `user`.
    pub(crate) async fn browser_as(&self, user: (&str, &str)) -> browser::Browser {
        let b = browser::Browser::start().await;
        b.log_in(&self.base, user.0, user.1).await;
        b
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        self.app.shutdown().await;
    }
}

/// A plain HTTP client logged in as `user` (cookies kept), and the page's CSRF token.
pub(crate) async fn http_login(base: &str, user: (&str, &str)) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .expect("client");
    let r = client
        .post(format!("{base}/login"))
        .form(&[("name", user.0), ("password", user.1)])
        .send()
        .await
        .expect("login");
    assert!(r.status().is_success(), "login: {}", r.status());
    let page = r.text().await.expect("page");
    (client, field(&page, "csrf"))
}

/// The value of the first `name="<field>" value="…"` on `page`.
pub(crate) fn field(page: &str, field: &str) -> String {
    let key = format!("name=\"{field}\" value=\"");
    let start = page
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} on:\n{page}"))
        + key.len();
    page[start..][..page[start..].find('"').expect("quote")].to_owned()
}

/// The first `href` on `page` that starts with `path`, unescaped.
pub(crate) fn link(page: &str, path: &str) -> String {
    let start = page
        .find(&format!("href=\"{path}"))
        .unwrap_or_else(|| panic!("no link to {path} on the page:\n{page}"));
    let rest = &page[start + 6..];
    rest[..rest.find('"').expect("a closing quote")].replace("&amp;", "&")
}

/// The dead-letter pages an operator walks: the groups, the first group's
/// list, its first message.
pub(crate) struct DeadPages {
    pub(crate) groups: String,
    pub(crate) list: String,
    pub(crate) message: String,
}

/// Walks the dead-letter pages as `ANA` over HTTP; each must answer 200.
pub(crate) async fn dead_pages(base: &str) -> DeadPages {
    let (client, _) = http_login(base, ANA).await;
    let get = |path: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 200, "{path}");
            r.text().await.expect("page")
        }
    };
    let groups = get("/dead?source=dead".into()).await;
    let list = get(link(&groups, "/dead/list")).await;
    let message = get(link(&list, "/dead/message")).await;
    DeadPages {
        groups,
        list,
        message,
    }
}

#[tokio::test]
async fn log_in_and_see_a_paused_channel_with_who_and_why() {
    let c = spawn_console("console-channels").await;
    let paused = c
        .app
        .cli(&[
            "channel",
            "pause",
            "store-eu",
            "--reason",
            "carrier maintenance",
        ])
        .await;
    ok(&paused);
    let b = browser::Browser::start().await;
    // Without a session every page sends you to the login.
    b.goto(&format!("{}/channels", c.base)).await;
    b.css("form[action='/login']").await;
    b.log_in(&c.base, ANA.0, ANA.1).await;
    b.goto(&format!("{}/channels", c.base)).await;
    let row = b.css("tr[data-channel=store-eu] td.state").await;
    let text = row.text().await.expect("text");
    assert!(
        text.contains("paused") && text.contains("carrier maintenance"),
        "{text}"
    );
    b.screenshot("console-channels").await;
    // Resume from the page: the control stream carries it to every replica.
    b.click_through("tr[data-channel=store-eu] form[action$='/resume'] button")
        .await;
    eventually(
        Duration::from_secs(10),
        "the channel to show running",
        || async {
            b.css("tr[data-channel=store-eu] td.state")
                .await
                .text()
                .await
                .ok()
                .filter(|t| t.contains("running"))
        },
    )
    .await;
    assert!(
        c.app.metrics().await.contains("octopods_channel_paused"),
        "worker metrics readable"
    );
    b.close().await;
    c.shutdown().await;
}

fn validation_job(i: usize) -> Value {
    button_job(&format!("val-{i:03}"))
}

#[tokio::test]
async fn a_group_of_50_validation_dead_letters_is_replayed_after_its_dry_run() {
    let c = spawn_console("console-replay").await;
    for i in 0..50 {
        let error = format!("buttons[0].title: {} characters, at most 20", 21 + i % 7);
        c.dead_letter(&validation_job(i), "validation", &error)
            .await;
    }
    c.dead_letter(
        &button_job("other-1"),
        "rejected",
        "octopods said 400: bad template",
    )
    .await;
    let b = c.browser_as(ANA).await;
    b.goto(&format!("{}/dead?source=dead", c.base)).await;
    let groups = b.all("tr.group").await;
    assert_eq!(groups.len(), 2, "two causes: {}", b.body_text().await);
    let first = groups[0].text().await.expect("text");
    assert!(
        first.contains("validation")
            && first.contains("50")
            && first.contains("buttons[N].title: N characters, at most N"),
        "{first}"
    );
    b.screenshot("console-dead-letters").await;
    // Drill into the group: 50 rows over one page, then a message.
    b.click_through("tr.group a").await;
    assert!(
        b.css("p.count")
            .await
            .text()
            .await
            .expect("t")
            .starts_with("50 matching")
    );
    assert_eq!(b.all("tr.row").await.len(), 50);
    b.screenshot("console-group").await;
    b.click_through("tr.row a").await;
    let body = b.css("pre.body").await.text().await.expect("t");
    assert!(
        body.contains("\"job_id\": \"val-") && !body.contains(PHONE),
        "masked: {body}"
    );
    b.screenshot("console-message").await;
    // Replay the group: the dry run counts first, nothing moves yet.
    b.goto(&format!("{}/dead?source=dead", c.base)).await;
    b.click_through("tr.group form[action='/dead/replay'] button")
        .await;
    let would = b.css("strong.would").await.text().await.expect("t");
    assert_eq!(would, "50");
    assert_eq!(c.app.depth("dead").await, 51, "a dry run moves nothing");
    b.screenshot("console-replay-dry-run").await;
    b.click_through("form[action$='/confirm'] button").await;
    b.css_within("h2.done", Duration::from_secs(60)).await;
    let summary = b.css("ul.summary").await.text().await.expect("t");
    assert!(summary.contains("replayed 50"), "{summary}");
    b.screenshot("console-replay-done").await;
    let mut sent = std::collections::BTreeSet::new();
    while sent.len() < 50 {
        let e = c.app.next_event().await;
        assert_eq!(e["event"], "sent", "{e}");
        sent.insert(e["job_id"].as_str().expect("job_id").to_owned());
    }
    assert!(sent.iter().all(|j| j.starts_with("val-")));
    assert_eq!(c.app.depth("dead").await, 1, "the other cause stays");
    b.close().await;
    c.shutdown().await;
}

/// A browser posts a hidden field's `\n` back as `\r\n`: a group named by
/// its error text no longer matched ("Nothing chosen"). Groups are named by
/// an id the server made.
#[tokio::test]
async fn a_group_whose_error_has_a_line_break_is_replayed_from_the_page() {
    let c = spawn_console("console-crlf").await;
    let error = "Octopods answered 503: upstream unavailable\nplease retry \u{202e}later\u{0}";
    for i in 0..3 {
        c.dead_letter(&button_job(&format!("lb-{i}")), "retries_exhausted", error)
            .await;
    }
    let b = c.browser_as(ANA).await;
    b.goto(&format!("{}/dead?source=dead", c.base)).await;
    b.click_through("tr.group form[action='/dead/replay'] button")
        .await;
    let would = b.css("strong.would").await.text().await.expect("t");
    assert_eq!(would, "3", "{}", b.body_text().await);
    b.click_through("form[action$='/confirm'] button").await;
    b.css_within("h2.done", Duration::from_secs(60)).await;
    let summary = b.css("ul.summary").await.text().await.expect("t");
    assert!(summary.contains("replayed 3"), "{summary}");
    for _ in 0..3 {
        assert_eq!(c.app.next_event().await["event"], "sent");
    }
    assert_eq!(c.app.depth("dead").await, 0);
    b.close().await;
    c.shutdown().await;
}

#[tokio::test]
async fn export_then_purge_deletes_exactly_what_the_backup_holds_while_new_ones_arrive() {
    let c = spawn_console("console-purge").await;
    for i in 0..30 {
        c.dead_letter(
            &button_job(&format!("old-{i}")),
            "window",
            "24 h window closed 3 h ago",
        )
        .await;
    }
    for i in 0..5 {
        c.dead_letter(
            &button_job(&format!("keep-{i}")),
            "rejected",
            "bad template",
        )
        .await;
    }
    let b = c.browser_as(ANA).await;
    b.goto(&format!("{}/dead?source=dead", c.base)).await;
    b.click_through("tr.group form[action='/dead/purge'] button")
        .await;
    assert_eq!(b.css("strong.would").await.text().await.expect("t"), "30");
    // New dead letters of the same cause arrive before and while it runs.
    for i in 0..10 {
        c.dead_letter(
            &button_job(&format!("new-{i}")),
            "window",
            "24 h window closed 5 h ago",
        )
        .await;
    }
    b.click_through("form[action$='/confirm'] button").await;
    for i in 10..20 {
        c.dead_letter(
            &button_job(&format!("new-{i}")),
            "window",
            "24 h window closed 1 h ago",
        )
        .await;
    }
    b.css_within("h2.done", Duration::from_secs(60)).await;
    let summary = b.css("ul.summary").await.text().await.expect("t");
    assert!(summary.contains("purged 30"), "{summary}");
    let link = b
        .css("a.backup")
        .await
        .attr("href")
        .await
        .expect("attr")
        .expect("href");
    // The backup holds exactly the purged ones; everything else is still there.
    let name = link.trim_start_matches("/exports/");
    let file = std::fs::read_to_string(c.exports.path().join(name)).expect("backup file");
    let backed: std::collections::BTreeSet<String> = file
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["job_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(backed.len(), 30);
    assert!(backed.iter().all(|j| j.starts_with("old-")), "{backed:?}");
    let left: std::collections::BTreeSet<String> = c
        .app
        .peek_all("dead")
        .await
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(&d.body).expect("json")["job_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(left.len(), 25, "5 kept + 20 new: {left:?}");
    assert!(left.iter().all(|j| !j.starts_with("old-")));
    // The download is the same file, for operators.
    let (http, _) = http_login(&c.base, ANA).await;
    let got = http
        .get(format!("{}{link}", c.base))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("t");
    assert_eq!(got, file);
    b.close().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_viewer_sees_but_cannot_replay() {
    let c = spawn_console("console-viewer").await;
    c.dead_letter(&button_job("v-1"), "validation", "title 21 chars, limit 20")
        .await;
    let b = c.browser_as(VIC).await;
    b.goto(&format!("{}/dead?source=dead", c.base)).await;
    assert_eq!(b.all("tr.group").await.len(), 1);
    assert!(
        b.all("form[action='/dead/replay']").await.is_empty(),
        "no replay button for a viewer"
    );
    b.goto(&format!("{}/channels", c.base)).await;
    assert!(
        b.all("form[action$='/pause']").await.is_empty(),
        "no channel control for a viewer"
    );
    // Forged by hand with the viewer's own session and token: refused.
    let (http, csrf) = http_login(&c.base, VIC).await;
    let r = http
        .post(format!("{}/dead/replay", c.base))
        .form(&[
            ("csrf", csrf.as_str()),
            ("source", "dead"),
            ("reason", "validation"),
            ("channel", "store-eu"),
            ("group", "0123456789abcdef0123456789abcdef"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert_eq!(c.app.depth("dead").await, 1);
    let metrics = http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("t");
    assert!(
        metrics.contains("octopods_console_actions_total{action=\"refused\"} 1"),
        "{metrics}"
    );
    b.close().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_cross_origin_post_is_refused() {
    let c = spawn_console("console-csrf").await;
    // Another site, with a form aimed at the console.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let evil_base = format!(
        "http://localhost:{}",
        evil.local_addr().expect("addr").port()
    );
    let target = format!("{}/channels/store-eu/pause", c.base);
    let html = format!(
        "<!doctype html><form method=post action=\"{target}\"><input name=reason value=pwned><button id=go>win a prize</button></form>"
    );
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(html) }),
        );
        drop(axum::serve(evil, router).await);
    });
    let b = c.browser_as(ANA).await;
    b.goto(&evil_base).await;
    b.click_through("#go").await;
    let text = b.body_text().await;
    assert!(
        text.contains("log in first") || text.contains("refused"),
        "{text}"
    );
    // By hand, with a valid session and token but another Origin, or a
    // browser saying cross-site, or no token: each refused.
    let (http, csrf) = http_login(&c.base, ANA).await;
    for (origin, site, token) in [
        (Some("http://evil.example"), None, csrf.as_str()),
        (None, Some("cross-site"), csrf.as_str()),
        (None, Some("same-site"), csrf.as_str()),
        (None, None, "wrong-token"),
    ] {
        let mut req = http
            .post(&target)
            .form(&[("csrf", token), ("reason", "pwned")]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let r = req.send().await.expect("post");
        assert_eq!(r.status(), 403, "{origin:?} {site:?}");
    }
    let status = ok(&c.app.cli(&["channel", "status", "--json"]).await);
    assert!(
        status.contains("\"state\":\"running\""),
        "nothing was paused: {status}"
    );
    // A GET never changes anything.
    let r = http.get(&target).send().await.expect("get");
    assert_eq!(r.status(), 405);
    b.close().await;
    c.shutdown().await;
}

#[tokio::test]
async fn hostile_dead_letters_render_inert_and_bounded() {
    let c = spawn_console("console-hostile").await;
    let mut job = button_job("<script>alert(1)</script>");
    job["body"] = Value::String(format!(
        "\"><img src=x onerror=alert(2)>{}",
        "A".repeat(1_000_000)
    ));
    job["destination_phone"] = "+4915112345678".into();
    c.dead_letter(
        &job,
        "validation",
        "\"><img src=x onerror=alert(3)> \u{202e}gnp.exe <b>bold</b>",
    )
    .await;
    let b = c.browser_as(ANA).await;
    for page in ["/dead?source=dead", "/dead/list?source=dead"] {
        b.goto(&format!("{}{page}", c.base)).await;
        assert!(b.no_dialog().await, "{page}: a script ran");
        let text = b.body_text().await;
        assert!(
            text.contains("\"><img src=x onerror=alert(") && text.contains("<b>bold</b>"),
            "{page}: the text is shown as text: {text}"
        );
        assert!(
            !text.contains('\u{202e}') && text.contains("\\u{202e}"),
            "{page}: the override is made visible"
        );
        assert!(
            b.all("img").await.is_empty() && b.all("main b").await.is_empty(),
            "{page}: no element from the data"
        );
    }
    assert!(b.body_text().await.contains("<script>alert(1)</script>"));
    b.click_through("tr.row a").await;
    assert!(b.no_dialog().await);
    let source = b.client.source().await.expect("source");
    assert!(
        source.len() < 300_000,
        "a 1 MB field is bounded: {} bytes",
        source.len()
    );
    let body = b.css("pre.body").await.text().await.expect("t");
    assert!(
        body.contains("more bytes not shown") && !body.contains("+4915112345678"),
        "bounded and masked"
    );
    assert!(b.all("img").await.is_empty() && b.all("script").await.is_empty());
    b.close().await;
    c.shutdown().await;
}

#[tokio::test]
async fn every_answer_forbids_script_and_framing_and_secrets_stay_out() {
    let c = spawn_console("console-headers").await;
    let r = reqwest::get(format!("{}/login", c.base))
        .await
        .expect("get");
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(
        r.headers().get("x-frame-options").map(|v| v.as_bytes()),
        Some(&b"DENY"[..])
    );
    let (http, _) = http_login(&c.base, ANA).await;
    for page in ["/channels", "/dead?source=dead", "/dead?source=unroutable"] {
        let text = http
            .get(format!("{}{page}", c.base))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("t");
        assert!(!text.contains("s3cret"), "{page} shows an API key");
        assert!(!text.contains("$argon2"), "{page} shows a password hash");
    }
    let wrong = reqwest::Client::new()
        .post(format!("{}/login", c.base))
        .form(&[("name", ANA.0), ("password", "nope")])
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), 401);
    c.shutdown().await;
}

#[tokio::test]
async fn one_message_is_replayed_from_its_own_page() {
    let c = spawn_console("console-one").await;
    c.dead_letter(
        &button_job("one-1"),
        "retries_exhausted",
        "gave up after 8 attempts",
    )
    .await;
    c.dead_letter(
        &button_job("one-2"),
        "retries_exhausted",
        "gave up after 8 attempts",
    )
    .await;
    let b = c.browser_as(ANA).await;
    b.goto(&format!("{}/dead/list?source=dead&job_id=one-2", c.base))
        .await;
    b.click_through("tr.row a").await;
    b.click_through("form[action='/dead/replay'] button").await;
    assert_eq!(b.css("strong.would").await.text().await.expect("t"), "1");
    b.click_through("form[action$='/confirm'] button").await;
    b.css_within("h2.done", Duration::from_secs(60)).await;
    let e = c.app.next_event().await;
    assert_eq!(
        (e["event"].as_str(), e["job_id"].as_str()),
        (Some("sent"), Some("one-2"))
    );
    let left = c.app.peek_all("dead").await;
    assert_eq!(left.len(), 1);
    assert!(String::from_utf8_lossy(&left[0].body).contains("one-1"));
    b.close().await;
    c.shutdown().await;
}

/// The class behind a flaky failure: a test that reads the page right after a
/// click that navigates can read the page being left, whose elements then go
/// stale. A form that posts to a slow page makes the race certain;
/// `click_through` must still hand over the page the click led to.
#[tokio::test]
async fn after_a_click_the_test_reads_the_page_the_click_led_to() {
    let site = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://127.0.0.1:{}",
        site.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        let router = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|| async {
                    axum::response::Html(
                        "<!doctype html><p>the form page</p>\
                         <form method=post action=/slow><button id=go>go</button></form>",
                    )
                }),
            )
            .route(
                "/slow",
                axum::routing::post(|| async {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    axum::response::Html("<!doctype html><p>the page it led to</p>")
                }),
            );
        drop(axum::serve(site, router).await);
    });
    let b = browser::Browser::start().await;
    b.goto(&base).await;
    b.click_through("#go").await;
    let text = b.body_text().await;
    assert!(text.contains("the page it led to"), "{text}");
    b.close().await;
}
