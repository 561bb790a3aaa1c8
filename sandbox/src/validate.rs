//! The interactive message as Octopods documents it (`docs/octopods-api.md`),
//! checked independently of the worker's own validator: a stand-in that
//! shared the worker's code could never disagree with it.
//!
//! Documented limits: reply buttons up to 3, title up to 20 characters;
//! a list up to 10 rows in total in up to 10 sections, row title up to 24,
//! row description up to 72; Meta's underneath: body 1024, header and
//! footer 60, button id 256, list button text 20, row id 200, section title
//! 24. Lengths count characters.

use serde_json::Value;

/// Why a message is refused, as the sandbox answers it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `ARGUMENT_MISSING` (code 1).
    Missing(String),
    /// `TYPE_MISMATCH` (code 2).
    WrongType(String),
    /// `VALIDATION` (code 7), naming the field and the limit.
    Limit(String),
}

const TYPES: [&str; 6] = [
    "button",
    "list",
    "product",
    "product_list",
    "flow",
    "catalog_message",
];

/// E.164: `+`, then 8 to 15 digits, the first not 0.
pub fn e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Checks `waba_interactive_message`.
pub fn interactive(message: &Value) -> Result<(), Refusal> {
    let m = "waba_interactive_message";
    let Some(message) = message.as_object() else {
        return Err(Refusal::WrongType(format!("{m} must be an object")));
    };
    let kind = match message.get("type") {
        None => return Err(Refusal::Missing(format!("{m}.type"))),
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(Refusal::WrongType(format!("{m}.type must be a string"))),
    };
    if !TYPES.contains(&kind) {
        return Err(Refusal::Limit(format!(
            "{m}.type: {kind:?} is not an interactive type"
        )));
    }
    if let Some(header) = message.get("header") {
        text_at(header, "text", &format!("{m}.header.text"), 60, false)?;
    }
    if let Some(footer) = message.get("footer") {
        text_at(footer, "text", &format!("{m}.footer.text"), 60, false)?;
    }
    // Meta's shapes for the catalogue and flow types are not checked here.
    if !matches!(kind, "button" | "list") {
        return Ok(());
    }
    let Some(body) = message.get("body") else {
        return Err(Refusal::Missing(format!("{m}.body")));
    };
    text_at(body, "text", &format!("{m}.body.text"), 1024, true)?;
    let Some(action) = message.get("action") else {
        return Err(Refusal::Missing(format!("{m}.action")));
    };
    if kind == "button" {
        buttons(action, &format!("{m}.action"))
    } else {
        list(action, &format!("{m}.action"))
    }
}

fn buttons(action: &Value, at: &str) -> Result<(), Refusal> {
    let buttons = array_at(action, "buttons", &format!("{at}.buttons"))?;
    if buttons.is_empty() || buttons.len() > 3 {
        return Err(Refusal::Limit(format!(
            "{at}.buttons: {} buttons, from 1 to 3",
            buttons.len()
        )));
    }
    for (i, b) in buttons.iter().enumerate() {
        let Some(reply) = b.get("reply") else {
            return Err(Refusal::Missing(format!("{at}.buttons[{i}].reply")));
        };
        text_at(
            reply,
            "id",
            &format!("{at}.buttons[{i}].reply.id"),
            256,
            true,
        )?;
        text_at(
            reply,
            "title",
            &format!("{at}.buttons[{i}].reply.title"),
            20,
            true,
        )?;
    }
    Ok(())
}

fn list(action: &Value, at: &str) -> Result<(), Refusal> {
    text_at(action, "button", &format!("{at}.button"), 20, true)?;
    let sections = array_at(action, "sections", &format!("{at}.sections"))?;
    if sections.is_empty() || sections.len() > 10 {
        return Err(Refusal::Limit(format!(
            "{at}.sections: {} sections, from 1 to 10",
            sections.len()
        )));
    }
    let mut rows_in_all = 0usize;
    for (s, section) in sections.iter().enumerate() {
        let here = format!("{at}.sections[{s}]");
        if section.get("title").is_some() {
            text_at(section, "title", &format!("{here}.title"), 24, false)?;
        }
        let rows = array_at(section, "rows", &format!("{here}.rows"))?;
        rows_in_all = rows_in_all.saturating_add(rows.len());
        for (r, row) in rows.iter().enumerate() {
            text_at(row, "id", &format!("{here}.rows[{r}].id"), 200, true)?;
            text_at(row, "title", &format!("{here}.rows[{r}].title"), 24, true)?;
            if row.get("description").is_some() {
                text_at(
                    row,
                    "description",
                    &format!("{here}.rows[{r}].description"),
                    72,
                    false,
                )?;
            }
        }
    }
    if rows_in_all == 0 || rows_in_all > 10 {
        return Err(Refusal::Limit(format!(
            "{at}.sections: {rows_in_all} rows in all, from 1 to 10"
        )));
    }
    Ok(())
}

fn array_at<'a>(parent: &'a Value, key: &str, path: &str) -> Result<&'a Vec<Value>, Refusal> {
    match parent.get(key) {
        None => Err(Refusal::Missing(path.to_owned())),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Refusal::WrongType(format!("{path} must be an array"))),
    }
}

/// A string field of at most `max` characters (non-empty when `required`).
fn text_at(
    parent: &Value,
    key: &str,
    path: &str,
    max: usize,
    required: bool,
) -> Result<(), Refusal> {
    let text = match parent.get(key) {
        None if required => return Err(Refusal::Missing(path.to_owned())),
        None => return Ok(()),
        Some(Value::String(s)) => s,
        Some(_) => return Err(Refusal::WrongType(format!("{path} must be a string"))),
    };
    let n = text.chars().count();
    if required && n == 0 {
        return Err(Refusal::Missing(path.to_owned()));
    }
    if n > max {
        return Err(Refusal::Limit(format!(
            "{path}: {n} characters, limit {max}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn buttons(n: usize, title: &str) -> Value {
        let b: Vec<Value> = (0..n)
            .map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": title}}))
            .collect();
        json!({"type": "button", "body": {"text": "Did your order arrive?"}, "action": {"buttons": b}})
    }

    #[test]
    fn the_documented_button_limits() {
        assert_eq!(interactive(&buttons(3, "Yes")), Ok(()));
        assert!(matches!(
            interactive(&buttons(4, "Yes")),
            Err(Refusal::Limit(_))
        ));
        assert_eq!(interactive(&buttons(1, &"é".repeat(20))), Ok(()));
        assert!(matches!(
            interactive(&buttons(1, &"é".repeat(21))),
            Err(Refusal::Limit(e)) if e.contains("21 characters, limit 20")
        ));
    }

    #[test]
    fn the_documented_list_limits() {
        let rows = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"id": format!("r{i}"), "title": "Row"}))
                .collect()
        };
        let list = |sections: Vec<Value>| {
            json!({"type": "list", "body": {"text": "Pick one"},
                   "action": {"button": "Options", "sections": sections}})
        };
        assert_eq!(interactive(&list(vec![json!({"rows": rows(10)})])), Ok(()));
        let eleven = list(vec![json!({"rows": rows(6)}), json!({"rows": rows(5)})]);
        assert!(matches!(interactive(&eleven), Err(Refusal::Limit(e)) if e.contains("11 rows")));
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        assert_eq!(
            interactive(&json!({"type": "button", "body": {"text": "x"}})),
            Err(Refusal::Missing("waba_interactive_message.action".into()))
        );
        assert!(matches!(
            interactive(&json!({"type": 3})),
            Err(Refusal::WrongType(_))
        ));
    }
}
