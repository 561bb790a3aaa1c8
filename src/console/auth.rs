//! Who is asking, and may they: the configured users (argon2 hashes), the
//! optional bearer token, login sessions (random ids in an HttpOnly,
//! SameSite=Strict cookie, held in this process), and the cross-site
//! request checks every state-changing POST passes.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{ConsoleConfig, ConsoleUser, Role};

/// The login name of the token (`console.token_file`), in the login form.
pub(crate) const TOKEN_USER: &str = "token";
/// Sessions kept at most; the oldest goes when a login would pass it.
const MAX_SESSIONS: usize = 10_000;
/// Password checks at once: argon2 takes ~19 MiB and tens of ms each, so a
/// flood of logins queues here instead of taking the machine.
const CHECKS_AT_ONCE: usize = 2;
/// Failed logins a user name may have per minute before it is refused for a while.
const FAILURES_PER_MINUTE: u32 = 10;
/// The hashes' costs accepted (a typo of `m=` must not make every login
/// allocate gigabytes).
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_TIME_COST: u32 = 16;

/// A signed-in person (or the token), and the per-session CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub(crate) user: String,
    pub(crate) role: Role,
    /// `None` for the bearer token: a browser never sends that by itself.
    pub(crate) csrf: Option<String>,
}

impl Who {
    pub(crate) fn may_change(&self) -> bool {
        self.role == Role::Operator
    }
}

struct Session {
    user: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

/// Why a login did not work. A wrong name and a wrong password are one
/// answer, so the page never says which names exist.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Wrong,
    TooMany,
    /// The OS gave no randomness for a session id: no session is opened.
    NoRandomness,
}

pub(crate) struct Auth {
    users: Vec<(ConsoleUser, String)>,
    /// SHA-256 of the token: compared digest to digest.
    token: Option<([u8; 32], Role)>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<u64, (Instant, u32)>>,
    checks: Semaphore,
    ttl: Duration,
    cookie_name: &'static str,
    secure: bool,
    public_origin: Option<String>,
    /// A hash checked for unknown names, so they take as long as known ones.
    decoy: String,
}

impl Auth {
    pub(crate) fn new(config: &ConsoleConfig) -> anyhow::Result<Self> {
        let mut users = Vec::new();
        for (i, u) in config.users.iter().enumerate() {
            let parsed = PasswordHash::new(&u.password_hash).map_err(|_| {
                anyhow::anyhow!("console.users[{i}].password_hash: not a valid argon2 PHC string")
            })?;
            let params = argon2::Params::try_from(&parsed).map_err(|_| {
                anyhow::anyhow!("console.users[{i}].password_hash: not valid argon2 parameters")
            })?;
            if params.m_cost() > MAX_MEMORY_KIB || params.t_cost() > MAX_TIME_COST {
                anyhow::bail!(
                    "console.users[{i}].password_hash: costs past m={MAX_MEMORY_KIB} KiB, t={MAX_TIME_COST}"
                );
            }
            users.push((u.clone(), u.password_hash.clone()));
        }
        let token = match &config.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("console.token_file {}: {e}", path.display()))?;
                let t = text.trim();
                if t.len() < 16 {
                    anyhow::bail!(
                        "console.token_file {}: the token must be at least 16 characters",
                        path.display()
                    );
                }
                Some((digest(t), config.token_role))
            }
            None => None,
        };
        if users.is_empty() && token.is_none() {
            anyhow::bail!(
                "console: no [[console.users]] and no console.token_file: the console has no anonymous mode"
            );
        }
        Ok(Self {
            users,
            token,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: Semaphore::new(CHECKS_AT_ONCE),
            ttl: config.session_ttl,
            cookie_name: if config.secure_cookies {
                "__Host-octopods_console"
            } else {
                "octopods_console"
            },
            secure: config.secure_cookies,
            public_origin: config.public_origin.clone(),
            decoy: hash_password("decoy password, never matches")?,
        })
    }

    /// The session or token a request carries, if it is valid.
    pub(crate) fn who(&self, headers: &HeaderMap) -> Option<Who> {
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let (want, role) = self.token.as_ref()?;
            return same(&digest(bearer.trim()), want).then(|| Who {
                user: "token".into(),
                role: *role,
                csrf: None,
            });
        }
        let id = cookie(headers, self.cookie_name)?;
        let mut sessions = self.sessions.lock().ok()?;
        let s = sessions.get(id)?;
        if s.expires <= Instant::now() {
            sessions.remove(id);
            return None;
        }
        Some(Who {
            user: s.user.clone(),
            role: s.role,
            csrf: Some(s.csrf.clone()),
        })
    }

    /// Checks a name and password; on success a new session and the
    /// `Set-Cookie` value that carries it.
    pub(crate) async fn login(&self, name: &str, password: &str) -> Result<String, Refused> {
        let bucket = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            name.hash(&mut h);
            h.finish() % 4096
        };
        if self.failed_recently(bucket) {
            return Err(Refused::TooMany);
        }
        // The token logs in as the user `token` (a name no user may take).
        if name == TOKEN_USER {
            return match &self.token {
                Some((want, role)) if same(&digest(password), want) => self
                    .open_session(TOKEN_USER, *role)
                    .ok_or(Refused::NoRandomness),
                _ => {
                    self.count_failure(bucket);
                    Err(Refused::Wrong)
                }
            };
        }
        let user = self.users.iter().find(|(u, _)| u.name == name);
        let hash = user.map_or(self.decoy.clone(), |(_, h)| h.clone());
        let password = password.as_bytes().to_vec();
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(Refused::Wrong);
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| Argon2::default().verify_password(&password, &h).is_ok())
        })
        .await
        .unwrap_or(false);
        let Some((user, _)) = user.filter(|_| ok) else {
            self.count_failure(bucket);
            return Err(Refused::Wrong);
        };
        self.open_session(&user.name, user.role)
            .ok_or(Refused::NoRandomness)
    }

    /// A new session; the `Set-Cookie` value that carries it. None when the
    /// OS cannot give the randomness its id and CSRF token need.
    fn open_session(&self, user: &str, role: Role) -> Option<String> {
        let id = random_token()?;
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_token()?,
            expires: Instant::now()
                .checked_add(self.ttl)
                .unwrap_or_else(Instant::now),
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
            sessions.insert(id.clone(), session);
        }
        Some(self.set_cookie(&id, self.ttl.as_secs()))
    }

    /// Ends the request's session; the `Set-Cookie` that clears it.
    pub(crate) fn logout(&self, headers: &HeaderMap) -> String {
        if let (Some(id), Ok(mut sessions)) =
            (cookie(headers, self.cookie_name), self.sessions.lock())
        {
            sessions.remove(id);
        }
        self.set_cookie("", 0)
    }

    fn set_cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            self.cookie_name,
            if self.secure { "; Secure" } else { "" }
        )
    }

    fn failed_recently(&self, bucket: u64) -> bool {
        let Ok(f) = self.failures.lock() else {
            return true;
        };
        f.get(&bucket).is_some_and(|(since, n)| {
            since.elapsed() < Duration::from_secs(60) && *n >= FAILURES_PER_MINUTE
        })
    }

    fn count_failure(&self, bucket: u64) {
        if let Ok(mut f) = self.failures.lock() {
            let e = f.entry(bucket).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= Duration::from_secs(60) {
                *e = (Instant::now(), 0);
            }
            e.1 = e.1.saturating_add(1);
        }
    }

    /// A state-changing request passes if the browser says it comes from
    /// this origin (`Sec-Fetch-Site`, `Origin` when sent) and, for a
    /// session, it carries the session's CSRF token. `csrf` is the form's.
    pub(crate) fn same_site(&self, headers: &HeaderMap) -> bool {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        if let Some(site) = get("sec-fetch-site")
            && site != "same-origin"
        {
            return false;
        }
        if let Some(origin) = get("origin") {
            let expected = match &self.public_origin {
                Some(o) => o.clone(),
                None => match get("host") {
                    Some(host) => format!("http://{host}"),
                    None => return false,
                },
            };
            return origin == expected;
        }
        true
    }

    pub(crate) fn allows(&self, who: &Who, headers: &HeaderMap, csrf: Option<&str>) -> bool {
        if !self.same_site(headers) {
            return false;
        }
        match &who.csrf {
            None => true,
            Some(want) => csrf.is_some_and(|got| same(&digest(got), &digest(want))),
        }
    }
}

/// An argon2id hash (default costs, random salt) as a PHC string.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::{PasswordHasher, password_hash::SaltString};
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random salt: {e}"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 256 bits from the OS, or nothing: a guessable session id is worse than
/// a refused login.
fn random_token() -> Option<String> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(origin: Option<&str>) -> Auth {
        let config = ConsoleConfig {
            users: vec![ConsoleUser {
                name: "ana".into(),
                password_hash: hash_password("correct horse").unwrap(),
                role: Role::Operator,
            }],
            public_origin: origin.map(str::to_owned),
            ..ConsoleConfig::default()
        };
        Auth::new(&config).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn a_login_makes_a_session_the_cookie_carries() {
        let a = auth(None);
        assert_eq!(a.login("ana", "wrong").await, Err(Refused::Wrong));
        assert_eq!(a.login("bob", "correct horse").await, Err(Refused::Wrong));
        let set = a.login("ana", "correct horse").await.unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let id = set.split(';').next().unwrap();
        let who = a.who(&headers(&[("cookie", id)])).unwrap();
        assert_eq!((who.user.as_str(), who.role), ("ana", Role::Operator));
        assert!(
            a.who(&headers(&[("cookie", "octopods_console=forged")]))
                .is_none()
        );
        let cleared = a.logout(&headers(&[("cookie", id)]));
        assert!(cleared.contains("Max-Age=0"));
        assert!(a.who(&headers(&[("cookie", id)])).is_none());
    }

    #[tokio::test]
    async fn guessing_a_password_is_stopped_after_ten_tries_a_minute() {
        let a = auth(None);
        for _ in 0..FAILURES_PER_MINUTE {
            assert_eq!(a.login("ana", "guess").await, Err(Refused::Wrong));
        }
        assert_eq!(a.login("ana", "correct horse").await, Err(Refused::TooMany));
    }

    #[test]
    fn a_post_from_another_site_or_without_the_token_is_refused() {
        let a = auth(None);
        let who = Who {
            user: "ana".into(),
            role: Role::Operator,
            csrf: Some("tok".into()),
        };
        let here = headers(&[
            ("host", "127.0.0.1:9465"),
            ("origin", "http://127.0.0.1:9465"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(a.allows(&who, &here, Some("tok")));
        assert!(!a.allows(&who, &here, Some("other")));
        assert!(!a.allows(&who, &here, None));
        let evil = headers(&[
            ("host", "127.0.0.1:9465"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!a.allows(&who, &evil, Some("tok")));
        let cross = headers(&[("host", "127.0.0.1:9465"), ("sec-fetch-site", "cross-site")]);
        assert!(!a.allows(&who, &cross, Some("tok")));
        let null = headers(&[("host", "h"), ("origin", "null")]);
        assert!(!a.allows(&who, &null, Some("tok")));
        let behind = auth(Some("https://console.example.com"));
        let proxied = headers(&[
            ("host", "10.0.0.5:9465"),
            ("origin", "https://console.example.com"),
        ]);
        assert!(behind.allows(&who, &proxied, Some("tok")));
    }

    #[tokio::test]
    async fn the_token_logs_in_as_token_with_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "a-token-of-32-characters-or-so-x\n").unwrap();
        let a = Auth::new(&ConsoleConfig {
            token_file: Some(file),
            token_role: Role::Viewer,
            ..ConsoleConfig::default()
        })
        .unwrap();
        assert_eq!(a.login("token", "wrong").await, Err(Refused::Wrong));
        let set = a
            .login("token", "a-token-of-32-characters-or-so-x")
            .await
            .unwrap();
        let id = set.split(';').next().unwrap();
        let who = a.who(&headers(&[("cookie", id)])).unwrap();
        assert_eq!((who.user.as_str(), who.role), ("token", Role::Viewer));
        let bearer = a
            .who(&headers(&[(
                "authorization",
                "Bearer a-token-of-32-characters-or-so-x",
            )]))
            .unwrap();
        assert!(bearer.csrf.is_none());
        assert!(
            a.who(&headers(&[("authorization", "Bearer nope")]))
                .is_none()
        );
    }

    #[test]
    fn no_users_and_no_token_is_refused() {
        assert!(Auth::new(&ConsoleConfig::default()).is_err());
    }
}
