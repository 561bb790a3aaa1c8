//! Asking the inbox platform what its webhook left out (docs/inbox-replies.md):
//! an Intercom contact's phone (`GET /contacts/{id}`), a HubSpot message's
//! text, direction and sender (`GET /conversations/v3/conversations/threads/
//! {thread}/messages/{message}`), each with the channel's token as a Bearer.
//! Ids from a webhook are escaped as one path segment; answers are read to
//! at most 256 KiB. A failure that may pass (no answer, 429, 5xx, 401/403: a
//! token being fixed) is [`Looked::Later`]; a 404 is [`Looked::Gone`].

use std::time::Duration;

use serde_json::Value;

use crate::{config::Secret, octopods::client::path_segment};

const MAX_ANSWER: usize = 256 * 1024;

/// What a lookup came to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Looked<T> {
    Found(T),
    /// The platform says it does not exist (or the id cannot be asked for).
    Gone,
    /// Ask again later: why.
    Later(String),
}

/// A HubSpot message, as far as matching needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HubspotMessage {
    pub text: Option<String>,
    /// `INCOMING`: the customer's (an `OUTGOING` one is the shop's own).
    pub incoming: bool,
    pub phone: Option<String>,
}

pub(crate) struct Lookup {
    http: reqwest::Client,
}

impl Lookup {
    pub(crate) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// An Intercom contact's `phone` (`None` when it has none).
    pub(crate) async fn intercom_phone(
        &self,
        api: &str,
        token: &Secret,
        contact: &str,
    ) -> (Option<u16>, Looked<Option<String>>) {
        let Some(id) = path_segment(contact) else {
            return (None, Looked::Gone);
        };
        let (status, looked) = self.get(&format!("{api}/contacts/{id}"), token).await;
        let looked = match looked {
            Looked::Found(v) => {
                Looked::Found(v.get("phone").and_then(Value::as_str).map(str::to_owned))
            }
            Looked::Gone => Looked::Gone,
            Looked::Later(why) => Looked::Later(why),
        };
        (status, looked)
    }

    /// A HubSpot message of a thread.
    pub(crate) async fn hubspot_message(
        &self,
        api: &str,
        token: &Secret,
        thread: &str,
        message: &str,
    ) -> (Option<u16>, Looked<HubspotMessage>) {
        let (Some(thread), Some(message)) = (path_segment(thread), path_segment(message)) else {
            return (None, Looked::Gone);
        };
        let url =
            format!("{api}/conversations/v3/conversations/threads/{thread}/messages/{message}");
        let (status, looked) = self.get(&url, token).await;
        let looked = match looked {
            Looked::Found(v) => Looked::Found(HubspotMessage {
                text: v
                    .get("text")
                    .and_then(Value::as_str)
                    .or_else(|| v.get("richText").and_then(Value::as_str))
                    .map(str::to_owned),
                incoming: v.get("direction").and_then(Value::as_str) == Some("INCOMING"),
                phone: v
                    .get("senders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|s| s.pointer("/deliveryIdentifier/value")?.as_str())
                    .map(str::to_owned),
            }),
            Looked::Gone => Looked::Gone,
            Looked::Later(why) => Looked::Later(why),
        };
        (status, looked)
    }

    async fn get(&self, url: &str, token: &Secret) -> (Option<u16>, Looked<Value>) {
        let sent = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .header("accept", "application/json")
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            // reqwest's message names the URL, which holds ids, never the token.
            Err(e) => return (None, Looked::Later(transport(&e))),
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len().saturating_add(chunk.len()) > MAX_ANSWER {
                        return (Some(status), Looked::Later("an answer over 256 KiB".into()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return (Some(status), Looked::Later(transport(&e))),
            }
        }
        let looked = match status {
            200..=299 => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Looked::Found(v),
                Err(_) => Looked::Later(format!("answered {status} with no JSON")),
            },
            404 | 410 => Looked::Gone,
            _ => Looked::Later(format!("answered {status}")),
        };
        (Some(status), looked)
    }
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "the request failed".into()
    }
}
