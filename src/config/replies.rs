//! `[replies]` (the webhook listener) and `[channels.replies]` (a channel
//! whose customers' answers come back; docs/contract.md §15): which inbox
//! platform, which workspace, and where its signing secret and API token
//! are read from. Secrets live in [`Secret`] and never print.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{ConfigError, invalid};

/// The inbox a channel's conversations land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Intercom,
    Hubspot,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Intercom => "intercom",
            Platform::Hubspot => "hubspot",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "intercom" => Some(Platform::Intercom),
            "hubspot" => Some(Platform::Hubspot),
            _ => None,
        }
    }

    /// The platform's public API, where contacts and messages are looked up.
    pub fn default_api_url(self) -> &'static str {
        match self {
            Platform::Intercom => "https://api.intercom.io",
            Platform::Hubspot => "https://api.hubapi.com",
        }
    }
}

/// `[replies]`: the webhook receiver, run by every replica when a channel
/// tracks replies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepliesConfig {
    /// Address of `/hooks/intercom` and `/hooks/hubspot`. Default `0.0.0.0:9466`.
    pub listen: SocketAddr,
    /// The base URL the platforms call, e.g. `https://hooks.shop.example`
    /// (HubSpot signs the full URL it called). Default: `http://` and
    /// `https://` + the request's `Host`, both tried.
    pub public_url: Option<String>,
    /// The largest webhook body accepted, in bytes. Default 1048576 (1 MiB).
    pub max_body: usize,
    /// How long a platform's API lookup may take. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
}

impl Default for RepliesConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9466)),
            public_url: None,
            max_body: 1024 * 1024,
            lookup_timeout: Duration::from_secs(5),
        }
    }
}

impl RepliesConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body) {
            return Err(invalid("replies.max_body", "from 1024 to 16777216 bytes"));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "replies.public_url",
                "must start with http:// or https://",
            ));
        }
        if self.lookup_timeout.is_zero() || self.lookup_timeout > Duration::from_secs(60) {
            return Err(invalid("replies.lookup_timeout", "from 1ms to 60s"));
        }
        Ok(())
    }
}

/// The longest a prompt can stay answerable: the prompt stream keeps a
/// little more (docs/architecture.md, Replies).
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[channels.replies]`: where this channel's answers arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelReplies {
    /// `intercom` or `hubspot`.
    pub platform: Platform,
    /// Intercom's `app_id` or HubSpot's `portalId`: webhooks of another
    /// workspace are not this channel's.
    pub workspace: String,
    /// The app's client secret, which signs webhooks: exactly one of these.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// The API access token (Intercom: read contacts; HubSpot:
    /// `conversations.read`): exactly one of these.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The platform's API base URL. Default: the platform's public one.
    pub api_url: Option<String>,
    /// How long a prompt can be answered. Default `7d`, at most `30d`.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Publish `reply_unmatched.<channel>` for a message that answers no
    /// open prompt (the customer's free text). Default false: counted only.
    #[serde(default)]
    pub unmatched_events: bool,
}

fn default_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// A secret read from the environment or a file. Never printed.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(SecretString::from(s.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A reply-tracking channel's secrets, read at start.
#[derive(Debug, Clone)]
pub struct ReplySecrets {
    pub signing: Secret,
    pub token: Secret,
}

impl ChannelReplies {
    pub(super) fn check(&self, key: &str) -> Result<(), ConfigError> {
        let ws = &self.workspace;
        if ws.is_empty() || ws.len() > 64 || !ws.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                format!("{key}.workspace"),
                "1-64 printable ASCII characters",
            ));
        }
        if self.secret_env.is_some() == self.secret_file.is_some() {
            return Err(invalid(
                key,
                "set exactly one of secret_env and secret_file",
            ));
        }
        if self.token_env.is_some() == self.token_file.is_some() {
            return Err(invalid(key, "set exactly one of token_env and token_file"));
        }
        if let Some(url) = &self.api_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                format!("{key}.api_url"),
                "must start with http:// or https://",
            ));
        }
        if self.window < Duration::from_secs(60) || self.window > MAX_WINDOW {
            return Err(invalid(format!("{key}.window"), "from 1m to 30d"));
        }
        Ok(())
    }

    pub fn api_url(&self) -> &str {
        self.api_url
            .as_deref()
            .unwrap_or(self.platform.default_api_url())
            .trim_end_matches('/')
    }

    /// Reads the signing secret and the token.
    pub fn secrets(&self, key: &str) -> Result<ReplySecrets, ConfigError> {
        Ok(ReplySecrets {
            signing: read_secret(
                &format!("{key}.secret"),
                self.secret_env.as_deref(),
                self.secret_file.as_deref(),
            )?,
            token: read_secret(
                &format!("{key}.token"),
                self.token_env.as_deref(),
                self.token_file.as_deref(),
            )?,
        })
    }
}

/// A secret from exactly one of an environment variable and a file
/// (surrounding whitespace trimmed; empty is an error).
pub(crate) fn read_secret(
    key: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Secret, ConfigError> {
    let text = match (env, file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            invalid(
                format!("{key}_env"),
                format!("environment variable {var} is not set"),
            )
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            invalid(
                format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?,
        _ => {
            return Err(invalid(
                key,
                format!("set exactly one of {key}_env and {key}_file"),
            ));
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(key, "empty (after trimming whitespace)"));
    }
    Ok(Secret::new(text))
}
