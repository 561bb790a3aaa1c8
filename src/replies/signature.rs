//! The platforms' webhook signatures, over the raw bytes received
//! (docs/inbox-replies.md): Intercom's `X-Hub-Signature` (HMAC-SHA1, hex)
//! and HubSpot's v3 (HMAC-SHA256 of method, URI, body and timestamp,
//! base64, within five minutes). Every comparison is constant-time
//! (`Mac::verify_slice`).

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::config::Secret;

/// How old (or how far ahead) a HubSpot request's timestamp may be.
pub(crate) const HUBSPOT_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Whether `header` (`sha1=<40 hex>`) signs `body` under `secret`.
pub(crate) fn intercom(secret: &Secret, header: &str, body: &[u8]) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha1=") else {
        return false;
    };
    let Some(expected) = from_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Why a HubSpot request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No signature or timestamp, or one that does not verify.
    Signature,
    /// A timestamp more than five minutes from now (a replay, or a clock far off).
    Stale,
}

/// A HubSpot v3 signature check: the timestamp within the window, then the
/// HMAC over `method + uri + body + timestamp` under any of `uris` (the
/// URL as HubSpot called it; behind a proxy more than one is possible).
pub(crate) fn hubspot(
    secret: &Secret,
    signature: &str,
    timestamp: &str,
    method: &str,
    uris: &[String],
    body: &[u8],
    now_ms: i64,
) -> Result<(), Refused> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| Refused::Signature)?;
    // `abs_diff`: no overflow whatever the timestamp (i64::MIN included).
    if now_ms.abs_diff(ts) > HUBSPOT_WINDOW_MS.unsigned_abs() {
        return Err(Refused::Stale);
    }
    let expected = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Refused::Signature)?;
    for uri in uris {
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            return Err(Refused::Signature);
        };
        mac.update(method.as_bytes());
        mac.update(uri.as_bytes());
        mac.update(body);
        mac.update(timestamp.trim().as_bytes());
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(Refused::Signature)
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 || !hex.is_ascii() {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_sha1_hex(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn intercom_signatures_verify_only_with_the_secret_over_the_exact_bytes() {
        let secret = Secret::new("client-secret");
        let body = br#"{"topic":"ping"}"#;
        let good = format!("sha1={}", hmac_sha1_hex("client-secret", body));
        assert!(intercom(&secret, &good, body));
        assert!(!intercom(&secret, &good, br#"{"topic": "ping"}"#));
        assert!(!intercom(&Secret::new("other"), &good, body));
        assert!(!intercom(&secret, &good.replace("sha1=", "sha256="), body));
        assert!(!intercom(&secret, "sha1=zz", body));
        assert!(!intercom(&secret, "", body));
    }

    #[test]
    fn hubspot_signatures_cover_method_uri_body_and_a_fresh_timestamp() {
        let secret = Secret::new("app-secret");
        let (uri, body, ts) = (
            "https://hooks.example/hooks/hubspot",
            b"[]",
            1_796_000_000_000_i64,
        );
        let sign = |uri: &str, ts: i64| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
            mac.update(format!("POST{uri}").as_bytes());
            mac.update(body);
            mac.update(ts.to_string().as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        };
        let uris = vec!["http://x/hooks/hubspot".to_owned(), uri.to_owned()];
        let sig = sign(uri, ts);
        let check = |sig: &str, ts: i64, now: i64| {
            hubspot(&secret, sig, &ts.to_string(), "POST", &uris, body, now)
        };
        assert_eq!(check(&sig, ts, ts + 1000), Ok(()));
        assert_eq!(
            check(&sig, ts, ts + HUBSPOT_WINDOW_MS + 1),
            Err(Refused::Stale)
        );
        assert_eq!(
            check(&sig, ts, ts - HUBSPOT_WINDOW_MS - 1),
            Err(Refused::Stale)
        );
        assert_eq!(
            check(&sign("https://evil/", ts), ts, ts),
            Err(Refused::Signature)
        );
        assert_eq!(check("not base64!", ts, ts), Err(Refused::Signature));
        assert_eq!(
            hubspot(&secret, &sig, "soon", "POST", &uris, body, ts),
            Err(Refused::Signature)
        );
    }
}
