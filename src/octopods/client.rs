//! The Octopods HTTP client: one pooled `reqwest` client, one request per
//! attempt; what came back (or did not) is decided by
//! [`classify`](crate::octopods::classify). The API key goes only into the
//! `X-Octopods-Auth` header, marked sensitive.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tracing::{Instrument, Span};

use crate::{
    config::{ApiKey, OctopodsConfig},
    octopods::classify::{self, Family, Transport, classify},
    outcome::Outcome,
};

pub(crate) const PATH: &str = "/api/v1/whatsapp/interactive";
/// `/api/v1/whatsapp/messages/{message_id}` (docs/contract.md §12).
pub(crate) const MESSAGES_PATH: &str = "/api/v1/whatsapp/messages";

/// An id from outside (Octopods' `message_id`) as one path segment: every
/// byte but RFC 3986's unreserved characters percent-encoded, so `/`, `?`,
/// `#`, `%`, `\\` and non-ASCII cannot leave it. `None` for an id that would
/// be a dot segment (`""`, `.`, `..`): URL parsers collapse those whether
/// written plain or as `%2E`, which would send the key to another path.
pub(crate) fn path_segment(s: &str) -> Option<String> {
    if s.is_empty() || s == "." || s == ".." {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            use std::fmt::Write;
            let _ = write!(out, "%{b:02X}");
        }
    }
    Some(out)
}

/// The status URL of a sent message, or `None` when its id cannot be one
/// path segment under the configured base.
pub(crate) fn status_url(base: &str, message_id: &str) -> Option<String> {
    path_segment(message_id).map(|seg| format!("{base}{MESSAGES_PATH}/{seg}"))
}

/// `/api/v1/whatsapp/templates/{template_id}/messages` (docs/contract.md §11).
pub(crate) const TEMPLATES_PATH: &str = "/api/v1/whatsapp/templates";

/// Which endpoint a request goes to; errors are read in its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Interactive,
    Template(u64),
}
pub(crate) const AUTH_HEADER: &str = "X-Octopods-Auth";
/// Answers larger than this are not read in full (Octopods' are tiny).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// One attempt's result: the status label for metrics and what it means.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// HTTP status, or `None` when no answer came.
    pub(crate) status: Option<u16>,
    pub(crate) outcome: Outcome,
    pub(crate) duration: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    /// The interactive endpoint, parsed once (none if the base does not parse:
    /// then every request fails as reqwest reports it).
    interactive: Option<reqwest::Url>,
    timeout: Duration,
}

impl From<Endpoint> for Family {
    fn from(e: Endpoint) -> Family {
        match e {
            Endpoint::Interactive => Family::Interactive,
            Endpoint::Template(_) => Family::Template,
        }
    }
}

/// Sends one request for a job: the Octopods client, or a fake in tests.
pub(crate) trait Sender {
    /// `attempt` counts from 1 (for the request's trace span).
    fn send(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        attempt: u32,
    ) -> impl std::future::Future<Output = Attempt> + Send;
}

/// The client with one channel's key: what the retry loop sends through.
pub(crate) struct ChannelSender<'a> {
    pub(crate) client: &'a Client,
    pub(crate) key: &'a ApiKey,
}

impl Sender for ChannelSender<'_> {
    async fn send(&self, endpoint: Endpoint, body: bytes::Bytes, attempt: u32) -> Attempt {
        self.client.send(self.key, endpoint, body, attempt).await
    }
}

impl Client {
    pub(crate) fn new(config: &OctopodsConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_concurrent_requests)
            .user_agent(concat!("octopods-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = config.base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            // Parsed once: a URL parse (with IDNA) per request was ~2 % of
            // the worker's CPU at full speed.
            interactive: reqwest::Url::parse(&format!("{base}{PATH}")).ok(),
            base,
            timeout: config.timeout,
        })
    }

    /// Sends one message (the caller holds a request permit).
    pub(crate) async fn send(
        &self,
        key: &ApiKey,
        endpoint: Endpoint,
        body: bytes::Bytes,
        attempt: u32,
    ) -> Attempt {
        let started = Instant::now();
        let post = match (endpoint, &self.interactive) {
            (Endpoint::Interactive, Some(url)) => self.http.post(url.clone()),
            (Endpoint::Interactive, None) => self.http.post(format!("{}{PATH}", self.base)),
            (Endpoint::Template(id), _) => self
                .http
                .post(format!("{}{TEMPLATES_PATH}/{id}/messages", self.base)),
        };
        let (post, span) = traced(post, "POST", self.interactive.as_ref(), attempt);
        // Boxed: the request's state lives on the heap only while it runs,
        // not in every waiting job's task.
        let request = Box::pin(self.request(post, key, body)).instrument(span.clone());
        let answered = request.await;
        if crate::observe::trace::on() {
            answered_on(&span, answered.as_ref().ok().map(|a| a.0));
        }
        let (status, outcome) = match answered {
            Ok((status, retry_after, answer)) => (
                Some(status),
                classify(endpoint.into(), status, retry_after, &answer),
            ),
            Err(outcome) => (None, outcome),
        };
        Attempt {
            status,
            outcome,
            duration: started.elapsed(),
        }
    }

    async fn request(
        &self,
        post: reqwest::RequestBuilder,
        key: &ApiKey,
        body: bytes::Bytes,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Outcome> {
        let mut auth = HeaderValue::from_str(key.expose()).map_err(|_| classify::unusable_key())?;
        auth.set_sensitive(true);
        let mut response = post
            .header(AUTH_HEADER, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ANSWER_BYTES.saturating_sub(answer.len());
                    answer
                        .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                    if room <= chunk.len() {
                        // Octopods' answers are tiny: a flood is not read to its end.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.transport_error(&e)),
            }
        }
        Ok((status, retry_after, answer))
    }

    /// Polls a sent message's status: `GET {base}/api/v1/whatsapp/messages/{id}`.
    /// The URL is built from the configured base, never from Octopods'
    /// `message_status_url`: an answer must not choose where the key goes.
    pub(crate) async fn status(
        &self,
        key: &ApiKey,
        message_id: &str,
    ) -> (Option<u16>, crate::octopods::status::Polled) {
        use crate::octopods::status::{Polled, read_answer};
        let Some(url) = status_url(&self.base, message_id) else {
            return (
                None,
                Polled::NoAnswer("the message_id cannot be a path segment; not polled".into()),
            );
        };
        let Ok(mut auth) = HeaderValue::from_str(key.expose()) else {
            return (
                None,
                Polled::NoAnswer("the channel's API key is not a valid header value".into()),
            );
        };
        auth.set_sensitive(true);
        let (get, span) = traced(self.http.get(&url), "GET", self.interactive.as_ref(), 1);
        let sent = get
            .header(AUTH_HEADER, auth)
            .send()
            .instrument(span.clone())
            .await;
        if crate::observe::trace::on() {
            answered_on(&span, sent.as_ref().ok().map(|r| r.status().as_u16()));
        }
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return (
                    None,
                    Polled::NoAnswer(format!("no answer: {}", error_chain(&e))),
                );
            }
        };
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ANSWER_BYTES.saturating_sub(answer.len());
            answer.extend(chunk.iter().take(room));
            if room <= chunk.len() {
                break;
            }
        }
        (Some(status), read_answer(status, &answer))
    }

    fn transport_error(&self, e: &reqwest::Error) -> Outcome {
        classify::transport(if e.is_timeout() {
            Transport::Timeout(self.timeout)
        } else if e.is_connect() {
            Transport::Connect
        } else {
            Transport::Broken(error_chain(e))
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `Retry-After`: delay in seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// With traces on, the request's CLIENT span, its context sent along in
/// `traceparent` (Octopods may continue it); off, the request as it was.
/// Every request goes to the configured base, so its parsed interactive URL
/// names the server: nothing is parsed or built again per request.
fn traced(
    request: reqwest::RequestBuilder,
    method: &str,
    server: Option<&reqwest::Url>,
    attempt: u32,
) -> (reqwest::RequestBuilder, Span) {
    if !crate::observe::trace::on() {
        return (request, Span::none());
    }
    let span = crate::observe::trace::request_span(method, server, attempt);
    let request = match crate::observe::trace::traceparent(&span) {
        Some(value) => request.header("traceparent", value),
        None => request,
    };
    (request, span)
}

/// The answer's status on the request's span; no answer or 5xx is an error.
fn answered_on(span: &Span, status: Option<u16>) {
    match status {
        Some(code) => {
            span.record("http.response.status_code", code);
            if code >= 400 {
                crate::observe::trace::failed(span);
            }
        }
        None => crate::observe::trace::failed(span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_cannot_leave_its_path_segment() {
        assert_eq!(path_segment("msg_01HT").as_deref(), Some("msg_01HT"));
        assert_eq!(
            path_segment("../../admin?x=1").as_deref(),
            Some("..%2F..%2Fadmin%3Fx%3D1")
        );
        for dots in ["", ".", ".."] {
            assert_eq!(path_segment(dots), None, "{dots:?}");
        }
    }

    const BASE: &str = "http://127.0.0.1:8080/octopods";

    fn stays_in_its_segment(id: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert_eq;
        let Some(url) = status_url(BASE, id) else {
            proptest::prop_assert!(id.is_empty() || id == "." || id == "..");
            return Ok(());
        };
        let u = reqwest::Url::parse(&url)
            .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{url}: {e}")))?;
        prop_assert_eq!(u.host_str(), Some("127.0.0.1"));
        prop_assert_eq!(u.port(), Some(8080));
        prop_assert_eq!(u.query(), None);
        prop_assert_eq!(u.fragment(), None);
        let segments: Vec<&str> = u.path_segments().into_iter().flatten().collect();
        prop_assert_eq!(segments.len(), 6, "{}", u.path());
        prop_assert_eq!(
            segments.get(..5),
            Some(&["octopods", "api", "v1", "whatsapp", "messages"][..])
        );
        Ok(())
    }

    proptest::proptest! {
        /// Any id, of any bytes, and ids made of what URL parsers treat
        /// specially: the request goes to the configured host, port and
        /// path prefix, one segment below it, or is not made.
        #[test]
        fn a_status_url_keeps_the_configured_host_port_and_path(
            any in proptest::prelude::any::<String>(),
            tricky in "[./\\\\%?#@:;=&+ Ee2Aa\u{ff0e}\u{2024}]{0,8}",
        ) {
            stays_in_its_segment(&any)?;
            stays_in_its_segment(&tricky)?;
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
