use proptest::prelude::*;
use serde_json::json;

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
fn numbers_glued_to_words_and_short_codes_are_not_phones() {
    assert_eq!(
        redact("recipient 15551234567 failed (#131047) id abc12345678 order-1234567890x"),
        "recipient +1555***4567 failed (#131047) id abc12345678 order-1234567890x"
    );
    assert_eq!(
        redact("to +15551234567, not +12 or +"),
        "to +1555***4567, not +12 or +"
    );
    assert!(matches!(
        redact("title 21 chars, limit 20"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn every_context_of_the_issue_is_masked() {
    for text in [
        "[4915112345678]",
        "<+4915112345678>",
        "https://wa.me/4915112345678?text=hi",
        "tel:+4915112345678",
        "to=%2B4915112345678&body=yes",
        "to=4915112345678&body=yes",
    ] {
        let masked = redact(text);
        assert!(!masked.contains("4915112345678"), "{text} → {masked}");
        assert!(masked.contains("+4915***5678"), "{text} → {masked}");
    }
}

#[test]
fn json_numbers_keys_and_strings_are_masked() {
    let mut v = json!({
        "destination_phone": 4915112345678_u64,
        "metadata": {"4915112345678": "key", "v": [4.915112345678e12, "+4915112345678"]},
        "quantity": 3,
    });
    redact_json(&mut v);
    let text = v.to_string();
    assert!(!text.contains("4915112345678"), "{text}");
    assert_eq!(v["destination_phone"], "+4915***5678");
    assert_eq!(v["quantity"], 3);
}

#[test]
fn json_deeper_than_the_walk_is_replaced_not_recursed() {
    // Deeper than serde_json parses (128): built here, as no input can be.
    let mut v = json!("+4915112345678");
    for _ in 0..200 {
        v = json!([v]);
    }
    redact_json(&mut v);
    let text = v.to_string();
    assert!(
        !text.contains("4915112345678") && text.contains("\"…\""),
        "{text}"
    );
}

/// An E.164 number's digits: first digit 1-9, 8 to 15 digits in all.
fn phone() -> impl Strategy<Value = String> {
    "[1-9][0-9]{7,14}"
}

/// How a phone may stand in text; `{}` is the digits.
const CONTEXTS: &[&str] = &[
    "{}",
    "+{}",
    "to {}, ok",
    "[{}]",
    "[+{}]",
    "<{}>",
    "<+{}>",
    "({})",
    "\"{}\"",
    "'{}'",
    "https://wa.me/{}",
    "https://wa.me/+{}?text=yes",
    "tel:{}",
    "tel:+{}",
    "to={}&text=hi",
    "to=%2B{}&text=hi",
    "to=%2b{}",
    "phone:{}",
    "a\n{}\n",
    "x+{}y",
    "{}.5",
];

proptest! {
    #[test]
    fn no_phone_survives_in_text(
        p in phone(),
        context in proptest::sample::select(CONTEXTS),
        before in "[a-z ]{0,8}[ :=/,;(\\[<]",
        after in "[ ,;)\\]>&?.][a-z ]{0,8}",
    ) {
        let text = format!("{before}{}{after}", context.replace("{}", &p));
        let masked = redact(&text);
        prop_assert!(!masked.contains(&p), "{text:?} → {masked:?}");
    }

    #[test]
    fn no_phone_survives_in_json(p in phone(), key in "[a-z_]{1,12}") {
        let n: u64 = p.parse().unwrap();
        let mut v = json!({
            key.clone(): n,
            "metadata": {&p: "as a key", "list": [n, format!("+{p}"), format!("wa.me/{p}")]},
            "nested": {"deeper": {"text": format!("call <+{p}> or [{p}]")}},
        });
        redact_json(&mut v);
        let text = v.to_string();
        prop_assert!(!text.contains(&p), "{text}");
    }
}
