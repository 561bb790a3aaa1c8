//! The Octopods HTTP client: one pooled `reqwest` client, one request per
//! attempt; what came back (or did not) is decided by
//! [`classify`](crate::classify). The API key goes only into the
//! `X-Octopods-Auth` header, marked sensitive.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::{
    classify::{self, Family, Transport, classify},
    config::{ApiKey, OctopodsConfig},
    outcome::Outcome,
};

pub(crate) const PATH: &str = "/api/v1/whatsapp/interactive";
/// `/api/v1/whatsapp/messages/{message_id}` (CONTRACT §12).
pub(crate) const MESSAGES_PATH: &str = "/api/v1/whatsapp/messages";

/// A path segment: everything but RFC 3986's unreserved characters escaped.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/v1/whatsapp/templates/{template_id}/messages` (CONTRACT §11).
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
    fn send(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
    ) -> impl std::future::Future<Output = Attempt> + Send;
}

/// The client with one channel's key: what the retry loop sends through.
pub(crate) struct ChannelSender<'a> {
    pub(crate) client: &'a Client,
    pub(crate) key: &'a ApiKey,
}

impl Sender for ChannelSender<'_> {
    async fn send(&self, endpoint: Endpoint, body: bytes::Bytes) -> Attempt {
        self.client.send(self.key, endpoint, body).await
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
        Ok(Self {
            http,
            base: config.base_url.trim_end_matches('/').to_owned(),
            timeout: config.timeout,
        })
    }

    /// Sends one message (the caller holds a request permit).
    pub(crate) async fn send(
        &self,
        key: &ApiKey,
        endpoint: Endpoint,
        body: bytes::Bytes,
    ) -> Attempt {
        let started = Instant::now();
        let url = match endpoint {
            Endpoint::Interactive => format!("{}{PATH}", self.base),
            Endpoint::Template(id) => format!("{}{TEMPLATES_PATH}/{id}/messages", self.base),
        };
        // Boxed: the request's state lives on the heap only while it runs,
        // not in every waiting job's task.
        let (status, outcome) = match Box::pin(self.request(&url, key, body)).await {
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
        url: &str,
        key: &ApiKey,
        body: bytes::Bytes,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Outcome> {
        let mut auth = HeaderValue::from_str(key.expose()).map_err(|_| classify::unusable_key())?;
        auth.set_sensitive(true);
        let mut response = self
            .http
            .post(url)
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
                    answer.extend(chunk.iter().take(room));
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
    ) -> (Option<u16>, crate::status::Polled) {
        use crate::status::{Polled, read_answer};
        let url = format!("{}{MESSAGES_PATH}/{}", self.base, path_segment(message_id));
        let Ok(mut auth) = HeaderValue::from_str(key.expose()) else {
            return (
                None,
                Polled::NoAnswer("the channel's API key is not a valid header value".into()),
            );
        };
        auth.set_sensitive(true);
        let sent = self.http.get(&url).header(AUTH_HEADER, auth).send().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_cannot_leave_its_path_segment() {
        assert_eq!(path_segment("msg_01HT"), "msg_01HT");
        assert_eq!(path_segment("../../admin?x=1"), "..%2F..%2Fadmin%3Fx%3D1");
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
