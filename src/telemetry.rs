//! Logging set-up (`tracing`, text or JSON) and the helpers that keep phone
//! numbers out of logs, events and errors.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` filters
/// (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// Masks an E.164 number: `+15551234567` → `+1555***4567`. Short numbers show
/// fewer leading digits so at least three stay hidden.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.trim_start_matches('+').chars().collect();
    let n = digits.len();
    if n < 5 {
        return "+***".into();
    }
    let tail = 4;
    let head = n.saturating_sub(tail + 3).min(4);
    let head: String = digits[..head].iter().collect();
    let tail: String = digits[n - tail..].iter().collect();
    format!("+{head}***{tail}")
}

/// Masks every `+` followed by 7 or more digits in free text (Octopods' error
/// messages may quote the number).
pub fn redact_phones(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('+') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits >= 7 {
            out.push_str(&mask_phone(&rest[i..i + 1 + digits]));
        } else {
            out.push_str(&rest[i..i + 1 + digits]);
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_the_contract_example() {
        assert_eq!(mask_phone("+15551234567"), "+1555***4567");
    }

    #[test]
    fn short_numbers_keep_three_digits_hidden() {
        assert_eq!(mask_phone("+12345678"), "+1***5678");
        assert_eq!(mask_phone("+123"), "+***");
    }

    #[test]
    fn redacts_numbers_inside_text() {
        assert_eq!(
            redact_phones("to +15551234567, not +12 or +"),
            "to +1555***4567, not +12 or +"
        );
    }
}
