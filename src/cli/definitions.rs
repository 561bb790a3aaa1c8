//! `octopods-worker definitions`: RabbitMQ definitions — the JSON that
//! `load_definitions` reads at boot and `rabbitmqctl import_definitions`
//! imports — generated from the same [`Plan`] the worker declares: the vhost,
//! every exchange, queue and binding, and with `--users` the worker's
//! least-privilege user and an operators' admin user, passwords hashed the
//! way RabbitMQ stores them (salted SHA-256), never written in clear.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{
    broker::topology::{Args, Plan},
    config::Config,
};

/// Where a user's password comes from: a file, else an environment variable.
#[derive(Debug, Clone)]
pub struct Secret {
    pub file: Option<PathBuf>,
    pub env: &'static str,
}

impl Secret {
    fn read(&self) -> anyhow::Result<String> {
        let value = match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?,
            None => std::env::var(self.env)
                .with_context(|| format!("set {} (or pass the password file option)", self.env))?,
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.chars().count() < 12 {
            anyhow::bail!(
                "the password from {} is shorter than 12 characters",
                self.file
                    .as_ref()
                    .map_or_else(|| self.env.to_owned(), |p| p.display().to_string())
            );
        }
        Ok(value)
    }
}

/// The users to write, with where their passwords are.
#[derive(Debug, Clone)]
pub struct Users {
    pub worker: String,
    pub worker_password: Secret,
    pub admin: String,
    pub admin_password: Secret,
}

/// The vhost of the first broker URL (`/` for `%2f` or none).
pub fn vhost_of(config: &Config) -> String {
    let url = config.broker.nodes().first().copied().unwrap_or_default();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split_once('/')
        .map_or("", |(_, p)| p);
    if path.is_empty() {
        "/".to_owned()
    } else {
        percent_decode(path)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i.saturating_add(1)..i.saturating_add(3))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i = i.saturating_add(3);
            }
            _ => {
                out.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ sha256(salt ‖ password)).
pub fn password_hash(password: &str, salt: [u8; 4]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The regular expression of every name under `prefix` (`^octopods\.`).
pub fn prefix_pattern(prefix: &str) -> String {
    let mut p = String::from("^");
    for c in prefix.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str("\\.");
    p
}

fn arguments(args: &Args) -> Value {
    Value::Object(
        args.iter()
            .map(|(k, v)| ((*k).to_owned(), v.json()))
            .collect::<Map<_, _>>(),
    )
}

/// The definitions for `config` in `vhost`, with `users` (name, hash, tags)
/// and their permissions when given.
pub fn definitions(config: &Config, vhost: &str, users: &[(String, String, bool)]) -> Value {
    let plan = Plan::new(config);
    let queues: Vec<Value> = plan
        .queues
        .iter()
        .map(|q| {
            json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                   "arguments": arguments(&q.arguments)})
        })
        .collect();
    let exchanges: Vec<Value> = plan
        .exchanges
        .iter()
        .map(|e| {
            json!({"name": e.name, "vhost": vhost, "type": e.kind, "durable": true,
                   "auto_delete": false, "internal": false, "arguments": arguments(&e.arguments)})
        })
        .collect();
    let bindings: Vec<Value> = plan
        .bindings
        .iter()
        .map(|b| {
            json!({"source": b.exchange, "vhost": vhost, "destination": b.queue,
                   "destination_type": "queue", "routing_key": b.routing_key,
                   "arguments": arguments(&b.arguments)})
        })
        .collect();
    let own = prefix_pattern(&config.broker.prefix);
    // The worker also appends to the control stream and hands status checks
    // to their queues through the default exchange; in a vhost of its own
    // that reaches nothing but the product's queues.
    let own_write = format!("{own}|^amq\\.default$");
    let user_list: Vec<Value> = users
        .iter()
        .map(|(name, hash, admin)| {
            json!({"name": name, "password_hash": hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": if *admin { vec!["administrator"] } else { vec![] }, "limits": {}})
        })
        .collect();
    let permissions: Vec<Value> = users
        .iter()
        .map(|(name, _, admin)| {
            if *admin {
                json!({"user": name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
            } else {
                json!({"user": name, "vhost": vhost, "configure": own, "write": own_write, "read": own})
            }
        })
        .collect();
    json!({
        "rabbitmq_version": "3.10.8",
        "users": user_list,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// Runs the command: prints (or writes to `out`, readable by its owner only
/// when it holds password hashes) the definitions.
pub fn run(
    config: &Config,
    vhost: Option<String>,
    users: Option<Users>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let vhost = vhost.unwrap_or_else(|| vhost_of(config));
    let mut hashed = Vec::new();
    if let Some(u) = &users {
        if u.worker == u.admin {
            anyhow::bail!("the worker and admin users must differ");
        }
        for (name, secret, admin) in [
            (&u.worker, &u.worker_password, false),
            (&u.admin, &u.admin_password, true),
        ] {
            let mut salt = [0u8; 4];
            getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            hashed.push((name.clone(), password_hash(&secret.read()?, salt), admin));
        }
    }
    let text = serde_json::to_string_pretty(&definitions(config, &vhost, &hashed))? + "\n";
    match out {
        None => print!("{text}"),
        Some(path) => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            #[cfg(unix)]
            if !hashed.is_empty() {
                use std::os::unix::fs::PermissionsExt;
                // RabbitMQ's own user reads it in the compose stack: group and
                // others may read, nobody but the owner may write. The hashes
                // are salted; the passwords never leave their files.
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            }
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} ({} users, vhost {vhost:?})",
                path.display(),
                hashed.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_rabbitmq_does() {
        // The hash RabbitMQ 3.10 itself stored for guest/guest on this
        // machine (`rabbitmqctl export_definitions`), recomputed from its salt.
        assert_eq!(
            password_hash("guest", [217, 131, 17, 188]),
            "2YMRvJWpIRH9CmZJkzic9PmXXnWGKvLzChQXuY2blokYtann"
        );
        assert_ne!(
            password_hash("guest2", [217, 131, 17, 188]),
            "2YMRvJWpIRH9CmZJkzic9PmXXnWGKvLzChQXuY2blokYtann"
        );
    }

    #[test]
    fn prefix_pattern_escapes_regex_characters() {
        assert_eq!(prefix_pattern("octopods"), "^octopods\\.");
        assert_eq!(prefix_pattern("a.b"), "^a\\.b\\.");
        assert_eq!(prefix_pattern("t-x_1"), "^t-x_1\\.");
    }

    #[test]
    fn vhost_comes_from_the_url() {
        let mut c = Config::from_toml(
            "[[channels]]\nname = \"a\"\napi_key_env = \"K\"\nrate_per_second = 1\n",
        )
        .unwrap();
        assert_eq!(vhost_of(&c), "/");
        c.broker.url = Some("amqp://u:p@h:5672/octopods?heartbeat=5".into());
        assert_eq!(vhost_of(&c), "octopods");
        c.broker.url = Some("amqp://u:p@h/%2f".into());
        assert_eq!(vhost_of(&c), "/");
        c.broker.url = Some("amqp://h".into());
        assert_eq!(vhost_of(&c), "/");
        c.broker.url = Some("amqp://h/a%zz".into());
        assert_eq!(vhost_of(&c), "a%zz");
    }
}
