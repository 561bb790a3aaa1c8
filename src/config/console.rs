//! `[console]`: the operators' browser console (`octopods-worker console`):
//! where it listens, who may log in, where purge backups are written.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, invalid};

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees everything the console shows; changes nothing.
    Viewer,
    /// Also replays, purges and controls channels.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// `[[console.users]]`: one person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    /// The login name, 1–64 printable characters.
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$…`), as
    /// `octopods-worker console hash-password` prints it.
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address to listen on. Default `127.0.0.1:9465`.
    pub listen: SocketAddr,
    /// The people who may log in.
    pub users: Vec<ConsoleUser>,
    /// A file holding a token (from a secret, at least 16 characters): log
    /// in with the name `token` and it as the password, or send it as
    /// `Authorization: Bearer <token>` from a script. Default: none.
    pub token_file: Option<PathBuf>,
    /// The role of requests carrying the token. Default `viewer`.
    pub token_role: Role,
    /// Where purge backups are written (created if missing). Default `dlq-exports`.
    pub export_dir: PathBuf,
    /// The origin browsers reach the console at, e.g.
    /// `https://console.example.com` behind a TLS proxy. Default: `http://`
    /// + the request's `Host`. State-changing requests from any other origin are refused.
    pub public_origin: Option<String>,
    /// Mark the session cookie `Secure` (and `__Host-`); set it behind TLS. Default false.
    pub secure_cookies: bool,
    /// How long a login lasts. Default `8h`.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Longest a view waits for another dlq command to finish with the
    /// queue. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            users: Vec::new(),
            token_file: None,
            token_role: Role::Viewer,
            export_dir: PathBuf::from("dlq-exports"),
            public_origin: None,
            secure_cookies: false,
            session_ttl: Duration::from_secs(8 * 3600),
            lock_wait: Duration::from_secs(5),
        }
    }
}

impl ConsoleConfig {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("console.users[{i}]");
            if u.name.is_empty()
                || u.name.chars().count() > 64
                || u.name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    format!("{key}.name"),
                    "must be 1-64 characters, no spaces or control characters",
                ));
            }
            if u.name == "token" {
                return Err(invalid(
                    format!("{key}.name"),
                    "`token` is the login name of console.token_file; choose another",
                ));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("user {:?} is configured twice", u.name),
                ));
            }
            // Never echo the hash: a mistyped one may be a password.
            if !u.password_hash.starts_with("$argon2") {
                return Err(invalid(
                    format!("{key}.password_hash"),
                    "must be an argon2 hash (`octopods-worker console hash-password` prints one)",
                ));
            }
        }
        if let Some(origin) = &self.public_origin {
            let ok = reqwest::Url::parse(origin).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
            });
            if ok.is_none() || origin.ends_with('/') {
                return Err(invalid(
                    "console.public_origin",
                    "must be an origin: scheme://host[:port], no path",
                ));
            }
        }
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(30 * 86_400)
        {
            return Err(invalid("console.session_ttl", "must be from 1m to 30d"));
        }
        if self.lock_wait > Duration::from_secs(60) {
            return Err(invalid("console.lock_wait", "must be at most 60s"));
        }
        Ok(())
    }
}
