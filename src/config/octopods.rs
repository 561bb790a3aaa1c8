//! `[octopods]`: the endpoint, its timeout and concurrency.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// `[octopods]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OctopodsConfig {
    /// Base URL of the Octopods API. Default `https://api.octopods.io`.
    pub base_url: String,
    /// Timeout of one HTTP request, connect included. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests to Octopods open at once, over all channels (each holds a
    /// connection). Jobs past it wait, still in flight. Default 256.
    pub max_concurrent_requests: usize,
    /// Allow an `http://` `base_url` on a host other than loopback. The API
    /// keys then cross the network in clear text: only for a stand-in
    /// (`sandbox`) on a private network, as in the compose stack. Default false.
    pub allow_insecure_http: bool,
}

impl Default for OctopodsConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.octopods.io".into(),
            timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            allow_insecure_http: false,
        }
    }
}

impl OctopodsConfig {
    /// `grace`: the worker's grace period, which a request must fit in.
    pub(super) fn check(&self, grace: Duration) -> Result<(), ConfigError> {
        if !self.base_url.starts_with("http://") && !self.base_url.starts_with("https://") {
            return Err(invalid(
                "octopods.base_url",
                "must start with http:// or https://",
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(invalid(
                "octopods.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("octopods.timeout", "must be above zero"));
        }
        if let Some(host) = plain_http_host(&self.base_url)
            && !is_loopback(host)
            && !self.allow_insecure_http
        {
            return Err(invalid(
                "octopods.base_url",
                format!(
                    "http:// to {host} would send the API keys in clear text; use https:// (http:// is allowed for a loopback host, or with octopods.allow_insecure_http = true for a stand-in on a private network)"
                ),
            ));
        }
        if self.timeout > grace {
            return Err(invalid(
                "octopods.timeout",
                format!(
                    "{} is longer than worker.grace_period ({}): a request in flight at shutdown could not finish",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(grace)
                ),
            ));
        }
        Ok(())
    }
}

/// The host of an `http://` URL (not `https://`), else `None`.
fn plain_http_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    Some(match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
