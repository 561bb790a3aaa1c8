//! What a page may show of a value written by whoever could publish a job:
//! control and bidi characters made visible, length bounded, phone numbers
//! masked, secret-looking headers redacted. HTML escaping is the template's
//! (maud escapes every interpolated value); this module decides the text.

use serde_json::Value;

use crate::{observe::logging::escape, observe::privacy};

/// Longest text of one field on a page; the rest is counted, not shown.
pub(crate) const FIELD: usize = 2_000;
/// Longest pretty-printed body on a page.
pub(crate) const BODY: usize = 64 * 1024;

/// `text` fit for a page: phone numbers masked ([`privacy`]), control and
/// bidi characters made visible, cut at `max` bytes with what was left out
/// said. Masked before escaping: an escape (`\n`) glued to a number would
/// make it look like part of a word.
pub(crate) fn shown(text: &str, max: usize) -> String {
    let masked = privacy::redact(text);
    bounded(escape(&masked).into_owned(), max)
}

fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = crate::observe::logging::truncate(text, max);
    let left = total.saturating_sub(cut.len());
    cut.push_str(&format!("… ({left} more bytes not shown)"));
    cut
}

/// A header whose name says it holds a secret shows `[redacted]`.
pub(crate) fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The body as a page shows it: pretty JSON (phones masked in strings,
/// numbers and keys; every string bounded; secrets redacted), else the
/// text, else the byte count.
pub(crate) fn body(data: &[u8]) -> String {
    match serde_json::from_slice::<Value>(data) {
        Ok(mut v) => {
            privacy::redact_json(&mut v);
            masked_json(&mut v, 0);
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            bounded(text, BODY)
        }
        Err(_) => match std::str::from_utf8(data) {
            Ok(text) => shown(text, BODY),
            Err(_) => format!("({} bytes, not UTF-8)", data.len()),
        },
    }
}

fn masked_json(v: &mut Value, depth: usize) {
    // serde_json already refuses nesting past 128; this bounds our walk too.
    if depth > 128 {
        *v = Value::String("…".into());
        return;
    }
    match v {
        Value::String(s) => *s = shown(s, FIELD),
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| masked_json(x, depth.saturating_add(1))),
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if secret_header(k) {
                    *x = Value::String("[redacted]".into());
                } else {
                    masked_json(x, depth.saturating_add(1));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_masked_even_beside_a_line_break() {
        assert_eq!(shown("+4915112345678", FIELD), "+4915***5678");
        assert_eq!(shown("to\n4915112345678", FIELD), "to\\n+4915***5678");
        assert_eq!(
            shown("title 21 chars, limit 20", FIELD),
            "title 21 chars, limit 20"
        );
    }

    #[test]
    fn hostile_text_is_visible_and_bounded() {
        let s = shown("a\u{202e}b\u{1b}[31m", FIELD);
        assert!(!s.contains('\u{202e}') && !s.contains('\u{1b}'), "{s}");
        let huge = "x".repeat(1_000_000);
        let s = shown(&huge, FIELD);
        assert!(s.len() < FIELD + 64, "{}", s.len());
        assert!(s.ends_with("(998000 more bytes not shown)"), "{s}");
    }

    #[test]
    fn a_body_is_pretty_masked_and_its_secrets_redacted() {
        let b =
            body(br#"{"job_id":"j1","to":"+4915112345678","api_key":"k-123","x":{"token":"t"}}"#);
        assert!(b.contains("\"+4915***5678\""), "{b}");
        assert!(!b.contains("k-123") && !b.contains("\"t\""), "{b}");
        assert!(b.contains("\n  \"job_id\""), "pretty: {b}");
        assert_eq!(body(&[0xff, 0xfe]), "(2 bytes, not UTF-8)");
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(body(deep.as_bytes()).len() < BODY + 64);
    }
}
