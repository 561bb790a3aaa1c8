//! Who is asking, and may they: the configured users (argon2 hashes), the
//! optional bearer token, login sessions (random ids in an HttpOnly,
//! SameSite=Strict cookie, held in this process), the failure budget every
//! way in shares (login form, token login, `Authorization: Bearer`: per
//! identity and per client address), and the cross-site request checks
//! every state-changing POST passes.

use std::{
    collections::HashMap,
    net::IpAddr,
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
/// Failed logins an identity (a user name, or the token) and a client
/// address may each have per minute before every way in is refused to them
/// for the rest of that minute.
const FAILURES_PER_MINUTE: u32 = 10;
/// Budgets kept: identities and addresses are hashed into this many buckets
/// each, so a flood of names or addresses cannot grow the map.
const BUCKETS: u64 = 4096;
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
    users: Vec<Known>,
    /// SHA-256 of the token: compared digest to digest.
    token: Option<([u8; 32], Role)>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<Budget, (Instant, u32)>>,
    checks: Semaphore,
    ttl: Duration,
    cookie_name: &'static str,
    secure: bool,
    public_origin: Option<String>,
    /// A hash checked for unknown names, at the costs of the most expensive
    /// user's hash, so an unknown name takes as long as a known one.
    decoy: String,
}

/// A configured user and the hashes a password is checked against.
struct Known {
    user: ConsoleUser,
    hash: String,
    /// Checked too after a wrong password when this user's hash is cheaper
    /// than the costliest one configured: the two together cost what the
    /// costliest does, so a wrong password takes as long for every user as
    /// for an unknown name (which checks the decoy).
    pad: Option<String>,
}

/// An argon2 hash's cost in KiB × passes (lanes run one after another).
fn cost(p: &argon2::Params) -> u64 {
    u64::from(p.m_cost()).saturating_mul(u64::from(p.t_cost()))
}

fn params_of(hash: &str) -> Option<argon2::Params> {
    argon2::Params::try_from(&PasswordHash::new(hash).ok()?).ok()
}

/// An argon2id hash of a password no one types, with `params`.
fn hash_with(params: argon2::Params) -> anyhow::Result<String> {
    use argon2::{PasswordHasher, password_hash::SaltString};
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random salt: {e}"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"decoy password, never matches", &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the decoy: {e}"))
}

/// One failure budget: an identity's or a client address's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Budget {
    Identity(u64),
    Address(u64),
}

impl Budget {
    fn of(name: &str, from: IpAddr) -> [Budget; 2] {
        // An IPv6 client holds a /64: count the prefix, not each address.
        let addr = match from {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a) >> 64,
        };
        [
            Budget::Identity(bucket(&name)),
            Budget::Address(bucket(&addr)),
        ]
    }
}

fn bucket(v: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish() % BUCKETS
}

/// What an `Authorization: Bearer` header comes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bearer {
    /// No bearer header: a session or nothing decides.
    Absent,
    Valid,
    Wrong,
    /// This identity or address failed too often: refused, right or wrong.
    TooMany,
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
            users.push(Known {
                user: u.clone(),
                hash: u.password_hash.clone(),
                pad: None,
            });
        }
        let decoy = decoy_hash(&users)?;
        pad_cheaper_hashes(&mut users, &decoy)?;
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
            decoy,
        })
    }

    /// A name as a log may show it: a configured user's (or `token`), never
    /// what was typed — a password typed into the name field must not land
    /// in the log.
    pub(crate) fn known<'a>(&'a self, name: &str) -> Option<&'a str> {
        if name == TOKEN_USER && self.token.is_some() {
            return Some(TOKEN_USER);
        }
        self.users
            .iter()
            .find(|k| k.user.name == name)
            .map(|k| k.user.name.as_str())
    }

    /// Checks a request's bearer token against the failure budget of the
    /// token's identity and of `from`, counting a wrong one against both.
    pub(crate) fn bearer(&self, headers: &HeaderMap, from: IpAddr) -> Bearer {
        let Some(given) = bearer_token(headers) else {
            return Bearer::Absent;
        };
        let budgets = Budget::of(TOKEN_USER, from);
        if self.failed_recently(&budgets) {
            return Bearer::TooMany;
        }
        match &self.token {
            Some((want, _)) if same(&digest(given), want) => Bearer::Valid,
            _ => {
                self.count_failure(&budgets);
                Bearer::Wrong
            }
        }
    }

    /// The session or token a request carries, if it is valid.
    pub(crate) fn who(&self, headers: &HeaderMap) -> Option<Who> {
        // The budget was checked (and spent) before any handler ran: the
        // console's `bearer` middleware answers a wrong or throttled token.
        if let Some(bearer) = bearer_token(headers) {
            let (want, role) = self.token.as_ref()?;
            return same(&digest(bearer), want).then(|| Who {
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
    pub(crate) async fn login(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<String, Refused> {
        let budgets = Budget::of(name, from);
        if self.failed_recently(&budgets) {
            return Err(Refused::TooMany);
        }
        // The token logs in as the user `token` (a name no user may take).
        if name == TOKEN_USER {
            return match &self.token {
                Some((want, role)) if same(&digest(password), want) => self
                    .open_session(TOKEN_USER, *role)
                    .ok_or(Refused::NoRandomness),
                _ => {
                    self.count_failure(&budgets);
                    Err(Refused::Wrong)
                }
            };
        }
        let known = self.users.iter().find(|k| k.user.name == name);
        let (hash, pad) = known.map_or((self.decoy.clone(), None), |k| {
            (k.hash.clone(), k.pad.clone())
        });
        let password = password.as_bytes().to_vec();
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(Refused::Wrong);
        };
        let ok = tokio::task::spawn_blocking(move || {
            let verify = |hash: &str| {
                PasswordHash::new(hash)
                    .is_ok_and(|h| Argon2::default().verify_password(&password, &h).is_ok())
            };
            let ok = verify(&hash);
            if !ok && let Some(pad) = pad {
                verify(&pad);
            }
            ok
        })
        .await
        .unwrap_or(false);
        let Some(user) = known.map(|k| &k.user).filter(|_| ok) else {
            self.count_failure(&budgets);
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

    /// Whether any of `budgets` is spent for this minute.
    fn failed_recently(&self, budgets: &[Budget]) -> bool {
        let Ok(f) = self.failures.lock() else {
            return true;
        };
        budgets.iter().any(|b| {
            f.get(b).is_some_and(|(since, n)| {
                since.elapsed() < Duration::from_secs(60) && *n >= FAILURES_PER_MINUTE
            })
        })
    }

    fn count_failure(&self, budgets: &[Budget]) {
        if let Ok(mut f) = self.failures.lock() {
            for b in budgets {
                let e = f.entry(*b).or_insert((Instant::now(), 0));
                if e.0.elapsed() >= Duration::from_secs(60) {
                    *e = (Instant::now(), 0);
                }
                e.1 = e.1.saturating_add(1);
            }
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

/// The decoy checked for unknown names: a hash with the costs of the most
/// expensive configured one, else argon2's defaults.
fn decoy_hash(users: &[Known]) -> anyhow::Result<String> {
    match users
        .iter()
        .filter_map(|k| params_of(&k.hash))
        .max_by_key(cost)
    {
        Some(costliest) => hash_with(costliest),
        None => hash_password("decoy password, never matches"),
    }
}

/// Gives each user whose hash costs clearly less than the decoy a pad: a
/// hash of the decoy's passes and the memory that makes up the difference.
/// Users with the same costs share one pad (made once, at start).
fn pad_cheaper_hashes(users: &mut [Known], decoy: &str) -> anyhow::Result<()> {
    let Some(top) = params_of(decoy) else {
        return Ok(());
    };
    let mut made: HashMap<(u32, u32, u32), String> = HashMap::new();
    for k in users.iter_mut() {
        let Some(own) = params_of(&k.hash) else {
            continue;
        };
        let missing = cost(&top).saturating_sub(cost(&own));
        // Within 10 %: as alike as two checks of one hash.
        if missing.saturating_mul(10) <= cost(&top) {
            continue;
        }
        let per_pass = missing
            .checked_div(u64::from(top.t_cost()))
            .unwrap_or(missing);
        let m = u32::try_from(per_pass).unwrap_or(u32::MAX);
        // min then max, not clamp: no bound order to get wrong.
        let m = m.min(top.m_cost()).max(argon2::Params::MIN_M_COST).max(8);
        let key = (own.m_cost(), own.t_cost(), own.p_cost());
        if let Some(pad) = made.get(&key) {
            k.pad = Some(pad.clone());
            continue;
        }
        let params = argon2::Params::new(m, top.t_cost(), 1, None)
            .map_err(|e| anyhow::anyhow!("console: the login pad's costs: {e}"))?;
        let pad = hash_with(params)?;
        made.insert(key, pad.clone());
        k.pad = Some(pad);
    }
    Ok(())
}

/// The token of an `Authorization: Bearer …` header, if there is one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
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

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

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
        assert_eq!(a.login("ana", "wrong", HERE).await, Err(Refused::Wrong));
        assert_eq!(
            a.login("bob", "correct horse", HERE).await,
            Err(Refused::Wrong)
        );
        let set = a.login("ana", "correct horse", HERE).await.unwrap();
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
            assert_eq!(a.login("ana", "guess", HERE).await, Err(Refused::Wrong));
        }
        assert_eq!(
            a.login("ana", "correct horse", HERE).await,
            Err(Refused::TooMany)
        );
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
        assert_eq!(a.login("token", "wrong", HERE).await, Err(Refused::Wrong));
        let set = a
            .login("token", "a-token-of-32-characters-or-so-x", HERE)
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

    fn with_token() -> Auth {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "a-token-of-32-characters-or-so-x\n").unwrap();
        Auth::new(&ConsoleConfig {
            users: auth(None).users.into_iter().map(|k| k.user).collect(),
            token_file: Some(file),
            ..ConsoleConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn wrong_bearer_tokens_spend_the_budget_of_the_token_login_too() {
        let a = with_token();
        let wrong = headers(&[("authorization", "Bearer guess-guess-guess-guess")]);
        let right = headers(&[("authorization", "Bearer a-token-of-32-characters-or-so-x")]);
        assert_eq!(a.bearer(&headers(&[]), HERE), Bearer::Absent);
        assert_eq!(a.bearer(&right, HERE), Bearer::Valid);
        for _ in 0..FAILURES_PER_MINUTE {
            assert_eq!(a.bearer(&wrong, ELSEWHERE), Bearer::Wrong);
        }
        // The token's identity is spent, from every address and every way in.
        assert_eq!(a.bearer(&right, HERE), Bearer::TooMany);
        assert_eq!(
            a.login("token", "a-token-of-32-characters-or-so-x", HERE)
                .await,
            Err(Refused::TooMany)
        );
        // Another identity from another address is not.
        assert!(a.login("ana", "correct horse", HERE).await.is_ok());
    }

    #[tokio::test]
    async fn one_address_cannot_try_many_names() {
        let a = auth(None);
        for i in 0..FAILURES_PER_MINUTE {
            let name = format!("name-{i}");
            assert_eq!(a.login(&name, "guess", HERE).await, Err(Refused::Wrong));
        }
        assert_eq!(
            a.login("ana", "correct horse", HERE).await,
            Err(Refused::TooMany)
        );
        assert!(a.login("ana", "correct horse", ELSEWHERE).await.is_ok());
    }

    #[test]
    fn the_decoy_costs_what_the_costliest_hash_costs() {
        use argon2::PasswordHasher;
        let costly = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(65_536, 3, 4, None).unwrap(),
        )
        .hash_password(
            b"pw",
            &argon2::password_hash::SaltString::encode_b64(&[7; 16]).unwrap(),
        )
        .unwrap()
        .to_string();
        let a = Auth::new(&ConsoleConfig {
            users: vec![
                ConsoleUser {
                    name: "cheap".into(),
                    password_hash: hash_password("x").unwrap(),
                    role: Role::Viewer,
                },
                ConsoleUser {
                    name: "dear".into(),
                    password_hash: costly,
                    role: Role::Operator,
                },
            ],
            ..ConsoleConfig::default()
        })
        .unwrap();
        let decoy = argon2::Params::try_from(&PasswordHash::new(&a.decoy).unwrap()).unwrap();
        assert_eq!(
            (decoy.m_cost(), decoy.t_cost(), decoy.p_cost()),
            (65_536, 3, 4)
        );
    }

    #[test]
    fn only_known_names_are_shown() {
        let a = with_token();
        assert_eq!(a.known("ana"), Some("ana"));
        assert_eq!(a.known("token"), Some("token"));
        assert_eq!(a.known("correct horse"), None);
        assert_eq!(auth(None).known("token"), None);
    }
}
