//! What a phone number looks like and how it is masked: the one rule for
//! logs, events, error texts and the console.
//!
//! A phone is a run of 7 to 15 ASCII digits that stands alone (no letter,
//! digit or `_` glued to either end), or a `+` (also written `%2B`, as a
//! form-encoded body has it) followed by 7 or more digits, glued or not.
//! That catches a number in free text, in `[brackets]`, `<angle brackets>`,
//! a `wa.me/…` or `tel:` link, a `to=…&…` form body, and — through
//! [`redact_json`] — a JSON number, a JSON key and a JSON string. It also
//! masks some long numbers that are not phones (a 10-digit timestamp): a
//! page or a log line loses a little, a customer's number never shows.
//!
//! Masked, a number keeps at most its first four and its last four digits
//! and always hides at least three: `+15551234567` → `+1555***4567`.

use std::borrow::Cow;

use serde_json::Value;

/// Fewest digits that make a phone.
const MIN_DIGITS: usize = 7;
/// Most digits of a phone without a `+` (E.164's bound).
const MAX_DIGITS: usize = 15;
/// How deep [`redact_json`] walks; deeper values are replaced whole.
/// serde_json refuses to parse past 128.
const MAX_DEPTH: usize = 128;

/// Masks an E.164 number: `+15551234567` → `+1555***4567`. Short numbers show
/// fewer leading digits so at least three stay hidden.
pub(crate) fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.trim_start_matches('+').chars().collect();
    let n = digits.len();
    if n < 5 {
        return "+***".into();
    }
    let tail = 4;
    let head = n.saturating_sub(tail + 3).min(4);
    let head: String = digits.iter().take(head).collect();
    let tail: String = digits.iter().skip(n.saturating_sub(tail)).collect();
    format!("+{head}***{tail}")
}

/// `text` with every phone number in it masked (borrowed when there is none).
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already in `out`
    let mut i = 0;
    while let Some(offset) = bytes
        .get(i..)
        .and_then(|b| b.iter().position(u8::is_ascii_digit))
    {
        let start = i.saturating_add(offset);
        let digits = bytes
            .get(start..)
            .map_or(0, |b| b.iter().take_while(|c| c.is_ascii_digit()).count());
        let end = start.saturating_add(digits);
        let sign = plus_before(bytes, start);
        let from = start.saturating_sub(sign);
        let glued = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let phone = if sign > 0 {
            digits >= MIN_DIGITS
        } else {
            (MIN_DIGITS..=MAX_DIGITS).contains(&digits)
                && !glued(from.checked_sub(1).and_then(|p| bytes.get(p)))
                && !glued(bytes.get(end))
        };
        if phone {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(text.get(copied..from).unwrap_or_default());
            o.push_str(&mask_phone(text.get(start..end).unwrap_or_default()));
            copied = end;
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(text.get(copied..).unwrap_or_default());
            Cow::Owned(o)
        }
    }
}

/// How many bytes before `at` spell a plus sign: `+` (1), `%2B` (3), or none.
fn plus_before(bytes: &[u8], at: usize) -> usize {
    let before = |n: usize| at.checked_sub(n).and_then(|s| bytes.get(s..at));
    if before(1) == Some(b"+") {
        1
    } else if before(3).is_some_and(|b| b.eq_ignore_ascii_case(b"%2b")) {
        3
    } else {
        0
    }
}

/// `value` with every phone masked: in strings, in keys, and numbers that
/// read as one (which become masked strings). Nested past 128 levels, a
/// value is replaced by `"…"`.
pub(crate) fn redact_json(value: &mut Value) {
    let mut open = vec![(value, 0_usize)];
    while let Some((v, depth)) = open.pop() {
        if depth > MAX_DEPTH {
            *v = Value::String("…".into());
            continue;
        }
        match v {
            Value::String(s) => {
                if let Cow::Owned(masked) = redact(s) {
                    *s = masked;
                }
            }
            Value::Number(n) => {
                let text = n.to_string();
                if let Cow::Owned(masked) = redact(&text) {
                    *v = Value::String(masked);
                }
            }
            Value::Array(a) => open.extend(a.iter_mut().map(|x| (x, depth.saturating_add(1)))),
            Value::Object(o) => {
                if o.keys().any(|k| matches!(redact(k), Cow::Owned(_))) {
                    *o = std::mem::take(o)
                        .into_iter()
                        .map(|(k, x)| (redact(&k).into_owned(), x))
                        .collect();
                }
                open.extend(o.values_mut().map(|x| (x, depth.saturating_add(1))));
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
