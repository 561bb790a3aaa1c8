//! Logging set-up (`tracing`, text or JSON; the trace exporter's layer when
//! traces are on) and the helpers that keep outside text from forging a
//! log line or driving a terminal. Phone numbers: [`crate::observe::privacy`].

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, filter::filter_fn, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` filters
/// the log lines (default `info`). With a `tracer`, spans of target
/// [`crate::observe::trace::TARGET`] — and only those — are exported too; log lines
/// never show them.
pub(crate) fn init(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let filter = || {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        match format!("{}=off", crate::observe::trace::TARGET).parse() {
            Ok(off) => filter.add_directive(off),
            Err(_) => filter,
        }
    };
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|m| m.target() == crate::observe::trace::TARGET))
    });
    let registry = tracing_subscriber::registry().with(traces);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// Text made safe for a log line or a terminal: control characters
/// (newlines, escape sequences) and bidirectional overrides are shown
/// escaped, so input can neither forge a line nor drive the terminal.
pub(crate) fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().saturating_add(8));
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        s.truncate(cut);
    }
    s
}

/// A panic's message, bounded, for the log and the dead-letter header.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into());
    truncate(text, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_newlines_and_terminal_codes() {
        assert_eq!(
            escape("a\nb\x1b[31mc\u{202e}"),
            "a\\nb\\u{1b}[31mc\\u{202e}"
        );
        assert!(matches!(escape("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
