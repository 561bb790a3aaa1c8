//! How a sandbox is set up: address, latency, keys, rate limit, the
//! template catalog and how fast message statuses move.

use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    /// Delay before every answer.
    pub latency: Duration,
    /// Keys accepted; empty means any non-empty key.
    pub api_keys: Vec<String>,
    /// Requests per second accepted per API key before answering 429 with
    /// `Retry-After: 1`, as Octopods does for sustained bursts. `None`: no limit.
    pub rate_limit: Option<u32>,
    /// The template catalog; empty: `539` (body) and `540:header,body,buttons`.
    pub templates: Vec<TemplateSpec>,
    /// A sent message's status is `SENT`, then `DELIVERED` this long after
    /// the send, then `READ` after `read_after` (unless scripted).
    pub delivered_after: Duration,
    pub read_after: Duration,
}

impl Default for SandboxConfig {
    /// On a free loopback port, answering at once, any key, no rate limit,
    /// the default templates, `DELIVERED` after 300 ms and `READ` after 600 ms.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::ZERO,
            api_keys: Vec::new(),
            rate_limit: None,
            templates: Vec::new(),
            delivered_after: Duration::from_millis(300),
            read_after: Duration::from_millis(600),
        }
    }
}

/// An accepted template: its id and the sections with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub id: u64,
    pub sections: Vec<String>,
}

impl TemplateSpec {
    /// `539` or `540:header,body,buttons`.
    pub fn parse(s: &str) -> Result<TemplateSpec, String> {
        let (id, sections) = s.split_once(':').unwrap_or((s, "body"));
        let id = id
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{id:?}: a template id is a positive integer"))?;
        let sections: Vec<String> = sections.split(',').map(|x| x.trim().to_owned()).collect();
        if let Some(bad) = sections
            .iter()
            .find(|x| !["header", "body", "footer", "buttons"].contains(&x.as_str()))
        {
            return Err(format!(
                "{bad:?}: sections are header, body, footer, buttons"
            ));
        }
        Ok(TemplateSpec { id, sections })
    }

    pub(crate) fn default_catalog() -> Vec<TemplateSpec> {
        vec![
            TemplateSpec {
                id: 539,
                sections: vec!["body".into()],
            },
            TemplateSpec {
                id: 540,
                sections: vec!["header".into(), "body".into(), "buttons".into()],
            },
        ]
    }
}
