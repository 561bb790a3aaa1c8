//! How a title and a reply compare (docs/contract.md §15): markup
//! stripped, Unicode NFC, invisible format characters (bidi controls,
//! zero-width marks) removed, whitespace trimmed and collapsed, case
//! folded. Never fuzzily: two texts are the same answer or they are not.
//! And how a phone compares: its digits.

use unicode_normalization::UnicodeNormalization;

/// The longest text compared: a title is at most 24 characters; a reply
/// longer than this is no option's title, whatever it says.
const MAX_COMPARED: usize = 4096;

/// `text` in the form titles and replies are compared in. `None` for a text
/// too long to be any option's title.
pub(crate) fn normalise(text: &str) -> Option<String> {
    if text.len() > MAX_COMPARED {
        return None;
    }
    let plain = strip_markup(text);
    let nfc: String = plain.nfc().filter(|c| !invisible(*c)).collect();
    let folded = caseless::default_case_fold_str(&nfc);
    let mut out = String::with_capacity(folded.len());
    for word in folded.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    // Case folding can make a composed form decomposable again (NFC ∘ fold ∘ NFC).
    Some(out.nfc().collect())
}

/// Bidi controls, zero-width characters and the byte-order mark: they change
/// how a text shows, not what it says.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The text of an HTML fragment (`<p>Yes, received</p>` → `Yes, received`):
/// tags dropped, a block tag or `<br>` a space, the common entities and
/// numeric references decoded. Not a parser of untrusted HTML for display:
/// only what the comparison needs, in one pass with no recursion.
pub(crate) fn strip_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(tag) = tail.strip_prefix('<') {
            match tag.split_once('>') {
                Some((_, after)) => {
                    out.push(' ');
                    rest = after;
                }
                None => {
                    // An unclosed `<` is text.
                    out.push('<');
                    rest = tag;
                }
            }
        } else {
            let (decoded, used) = entity(tail);
            out.push_str(&decoded);
            rest = tail.get(used..).unwrap_or_default();
        }
    }
    out.push_str(rest);
    out
}

/// One entity at the start of `tail` (which starts with `&`): what it
/// stands for and how many bytes it took; an unknown one is itself.
fn entity(tail: &str) -> (String, usize) {
    // Bytes, not a `str` slice: the 12th byte may fall inside a character.
    let Some(end) = tail.bytes().take(12).position(|b| b == b';') else {
        return ("&".into(), 1);
    };
    let name = &tail[1..end];
    let decoded = match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" | "#39" => Some('\''),
        "nbsp" => Some(' '),
        _ => name
            .strip_prefix("#x")
            .or_else(|| name.strip_prefix("#X"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32),
    };
    match decoded {
        Some(c) => (c.to_string(), end.saturating_add(1)),
        None => ("&".into(), 1),
    }
}

/// A phone's digits, the form phones are hashed in: `+1 (555) 123-4567`,
/// `0015551234567` and `15551234567` are one number. `None` when it cannot
/// be one (fewer than 7 or more than 15 digits).
pub(crate) fn phone_digits(phone: &str) -> Option<String> {
    if phone.len() > 64 {
        return None;
    }
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let digits = if phone.trim_start().starts_with('+') {
        digits.as_str()
    } else {
        digits.strip_prefix("00").unwrap_or(&digits)
    };
    (7..=15).contains(&digits.len()).then(|| digits.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_compare_after_markup_form_space_and_case() {
        let title = normalise("Yes, received").unwrap();
        for reply in [
            "Yes, received",
            "<p>Yes, received</p>",
            "  YES,   received \n",
            "yes,&nbsp;received",
            "\u{202E}Yes, received\u{202C}",
            "Yes,\u{200B} received",
            "<p>Yes,<br>received</p>",
        ] {
            assert_eq!(
                normalise(reply).as_deref(),
                Some(title.as_str()),
                "{reply:?}"
            );
        }
        // Composed and decomposed forms are one title.
        assert_eq!(normalise("Caf\u{e9}"), normalise("Cafe\u{301}"));
        // Case folding, not only lower-casing.
        assert_eq!(normalise("STRASSE"), normalise("straße"));
        // Never fuzzily.
        assert_ne!(normalise("Not yet"), normalise("Not yet!"));
        assert_ne!(normalise("Yes"), normalise("Yes, received"));
    }

    #[test]
    fn markup_is_stripped_in_one_pass_whatever_it_holds() {
        assert_eq!(strip_markup("a < b"), "a < b");
        assert_eq!(
            strip_markup("&unknown; &amp; &#65;&#x42;"),
            "&unknown; & AB"
        );
        assert_eq!(strip_markup("&#1114112;"), "&#1114112;");
        // An entity followed closely by a multi-byte character.
        assert_eq!(strip_markup("&gt; is my \u{202e}x"), "> is my \u{202e}x");
        assert_eq!(
            strip_markup("&\u{202e}\u{202e}\u{202e}\u{202e};"),
            "&\u{202e}\u{202e}\u{202e}\u{202e};"
        );
        let deep = "<b>".repeat(100_000) + "x";
        assert_eq!(strip_markup(&deep).trim(), "x");
        assert_eq!(normalise(&"x".repeat(5000)), None);
    }

    #[test]
    fn phones_compare_by_their_digits() {
        let want = Some("15551234567".to_owned());
        assert_eq!(phone_digits("+1 (555) 123-4567"), want);
        assert_eq!(phone_digits("0015551234567"), want);
        assert_eq!(phone_digits("15551234567"), want);
        assert_eq!(phone_digits("+1555"), None);
        assert_eq!(phone_digits(&"1".repeat(16)), None);
    }
}
