//! `dlq purge --only-exported FILE`: delete exactly the dead letters a
//! `dlq export` file holds. Each message is identified by a fingerprint of
//! what export wrote of it — routing key, headers and body — less
//! `x-delivery-count`, which a quorum queue raises each time a message is
//! looked at. Two byte-identical dead letters share a fingerprint; the file
//! counts them, so the purge deletes as many as the file holds, never more.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};

type Fingerprint = [u8; 32];

/// The dead letters of an export file, by fingerprint.
#[derive(Debug, Default)]
pub(crate) struct Exported {
    left: HashMap<Fingerprint, u32>,
    pub(crate) lines: u64,
}

impl Exported {
    /// Reads an export file (JSON lines), streaming.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the export file {}", path.display()))?;
        let mut exported = Exported::default();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line =
                line.with_context(|| format!("{}: line {}", path.display(), i.saturating_add(1)))?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{}: line {} is not JSON",
                    path.display(),
                    i.saturating_add(1)
                )
            })?;
            let print = fingerprint(&value).with_context(|| {
                format!(
                    "{}: line {} is not a `dlq export` line (no routing_key and body)",
                    path.display(),
                    i.saturating_add(1)
                )
            })?;
            let n = exported.left.entry(print).or_default();
            *n = n.saturating_add(1);
            exported.lines = exported.lines.saturating_add(1);
        }
        Ok(exported)
    }

    /// Whether the export holds this message (an export line of it); each
    /// line matches once.
    pub(crate) fn take(&mut self, export_line: &Value) -> bool {
        let Some(print) = fingerprint(export_line) else {
            return false;
        };
        match self.left.get_mut(&print) {
            Some(n) if *n > 0 => {
                *n = n.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// Lines of the file not matched by any message.
    pub(crate) fn unmatched(&self) -> u64 {
        self.left.values().map(|n| u64::from(*n)).sum()
    }
}

/// The fingerprint of one `dlq export` line.
pub(crate) fn fingerprint(line: &Value) -> Option<Fingerprint> {
    let routing_key = line.get("routing_key")?.as_str()?;
    let body = match (line.get("body"), line.get("body_base64")) {
        (Some(Value::String(b)), _) => ("text", b.as_str()),
        (_, Some(Value::String(b))) => ("base64", b.as_str()),
        _ => return None,
    };
    let mut headers = line
        .get("properties")
        .and_then(|p| p.get("headers"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    headers.remove("x-delivery-count");
    headers.sort_keys();
    let mut h = Sha256::new();
    for part in [
        routing_key,
        body.0,
        body.1,
        &Value::Object(headers).to_string(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    Some(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn line(key: &str, count: i64) -> Value {
        json!({"routing_key": "window.store-eu", "body": "{}", "job_id": "j",
               "properties": {"headers": {"x-octopods-reason": key, "x-delivery-count": count}}})
    }

    #[test]
    fn the_delivery_count_does_not_change_the_fingerprint() {
        assert_eq!(
            fingerprint(&line("window", 1)),
            fingerprint(&line("window", 7))
        );
        assert_ne!(
            fingerprint(&line("window", 1)),
            fingerprint(&line("expired", 1))
        );
    }

    #[test]
    fn identical_dead_letters_are_taken_as_often_as_exported() {
        let mut e = Exported::default();
        let print = fingerprint(&line("window", 0)).unwrap();
        e.left.insert(print, 2);
        assert!(e.take(&line("window", 3)));
        assert!(e.take(&line("window", 4)));
        assert!(!e.take(&line("window", 5)));
        assert_eq!(e.unmatched(), 0);
    }
}
