//! The job's `fallback_template` (docs/contract.md §11): an approved template sent
//! instead of the interactive message when the 24-hour window is closed.
//! Validated like every other field; the request body is built once.

use serde_json::{Map, Value};

/// Longest `header_attachment_url`, in bytes.
const MAX_URL: usize = 2048;
const FIELDS: [&str; 4] = [
    "template_id",
    "message_variables",
    "header_attachment_url",
    "destination_user_name",
];
const SECTIONS: [&str; 4] = ["header", "body", "footer", "buttons"];

/// A validated fallback template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Octopods' numeric template id (positive).
    pub id: u64,
    /// The optional fields as they go into the request body.
    fields: Map<String, Value>,
}

impl Template {
    /// Parses `fallback_template`; the error names the field and the limit.
    pub fn parse(value: &Value) -> Result<Template, String> {
        let p = "fallback_template";
        let Value::Object(m) = value else {
            return Err(format!("{p}: expected an object"));
        };
        if let Some(unknown) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!("{p}.{unknown}: unknown field"));
        }
        let id = match m.get("template_id") {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("{p}.template_id: {n} is not a positive integer"))?,
            Some(_) => return Err(format!("{p}.template_id: expected a positive integer")),
            None => return Err(format!("{p}.template_id: required")),
        };
        let mut fields = Map::new();
        match m.get("message_variables") {
            None | Some(Value::Null) => {}
            Some(v) => {
                fields.insert("message_variables".into(), variables(v)?);
            }
        }
        match m.get("header_attachment_url") {
            None | Some(Value::Null) => {}
            Some(Value::String(url)) => {
                let rest = url.strip_prefix("https://").unwrap_or_default();
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if host.is_empty() || url.len() > MAX_URL || url.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "{p}.header_attachment_url: must be an https:// URL of at most {MAX_URL} bytes"
                    ));
                }
                fields.insert("header_attachment_url".into(), Value::String(url.clone()));
            }
            Some(_) => return Err(format!("{p}.header_attachment_url: expected a string")),
        }
        match m.get("destination_user_name") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) => {
                let n = name.chars().count();
                if n > 200 {
                    return Err(format!(
                        "{p}.destination_user_name: {n} characters, limit 200"
                    ));
                }
                fields.insert("destination_user_name".into(), Value::String(name.clone()));
            }
            Some(_) => return Err(format!("{p}.destination_user_name: expected a string")),
        }
        Ok(Template { id, fields })
    }

    /// The template request's body: the phone, the template's fields, and the
    /// job's Intercom options.
    pub fn request_body(
        &self,
        phone: &str,
        intercom: &Map<String, Value>,
    ) -> Result<bytes::Bytes, String> {
        let mut body = Map::new();
        body.insert("destination_phone".into(), Value::String(phone.to_owned()));
        body.extend(self.fields.clone());
        body.extend(intercom.clone());
        serde_json::to_vec(&body)
            .map(bytes::Bytes::from)
            .map_err(|e| format!("fallback_template: {e}"))
    }
}

/// `message_variables`: an array of strings (body-only templates), or an
/// object of string arrays per section; missing sections are sent empty, as
/// Octopods wants every section present.
fn variables(v: &Value) -> Result<Value, String> {
    let p = "fallback_template.message_variables";
    match v {
        Value::Array(items) => {
            strings(items, p)?;
            Ok(v.clone())
        }
        Value::Object(m) => {
            if let Some(unknown) = m.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
                return Err(format!(
                    "{p}.{unknown}: unknown section (header, body, footer, buttons)"
                ));
            }
            let mut out = Map::new();
            for section in SECTIONS {
                let items = match m.get(section) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => {
                        strings(items, &format!("{p}.{section}"))?;
                        items.clone()
                    }
                    Some(_) => return Err(format!("{p}.{section}: expected an array of strings")),
                };
                out.insert(section.into(), Value::Array(items));
            }
            Ok(Value::Object(out))
        }
        _ => Err(format!(
            "{p}: expected an array of strings or an object of string arrays"
        )),
    }
}

fn strings(items: &[Value], path: &str) -> Result<(), String> {
    match items.iter().position(|i| !i.is_string()) {
        Some(i) => Err(format!("{path}[{i}]: expected a string")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(v: Value) -> String {
        Template::parse(&v).unwrap_err()
    }

    #[test]
    fn a_full_template_builds_its_request() {
        let t = Template::parse(&json!({"template_id": 539,
            "message_variables": {"body": ["Alex", "1234"]},
            "header_attachment_url": "https://cdn.example/x.png", "destination_user_name": "Alex"}))
        .unwrap();
        assert_eq!(t.id, 539);
        let mut intercom = Map::new();
        intercom.insert("open_intercom_conversation".into(), json!(true));
        let body: Value =
            serde_json::from_slice(&t.request_body("+15551234567", &intercom).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"destination_phone": "+15551234567",
            "message_variables": {"header": [], "body": ["Alex", "1234"], "footer": [], "buttons": []},
            "header_attachment_url": "https://cdn.example/x.png", "destination_user_name": "Alex",
            "open_intercom_conversation": true})
        );
    }

    #[test]
    fn each_rule_names_its_field_and_limit() {
        assert_eq!(err(json!({})), "fallback_template.template_id: required");
        assert_eq!(
            err(json!({"template_id": 0})),
            "fallback_template.template_id: 0 is not a positive integer"
        );
        assert_eq!(
            err(json!({"template_id": -3})),
            "fallback_template.template_id: -3 is not a positive integer"
        );
        assert_eq!(
            err(json!({"template_id": 1.5})),
            "fallback_template.template_id: 1.5 is not a positive integer"
        );
        assert_eq!(
            err(json!({"template_id": "539"})),
            "fallback_template.template_id: expected a positive integer"
        );
        assert_eq!(
            err(json!({"template_id": 1, "templat": 2})),
            "fallback_template.templat: unknown field"
        );
        assert_eq!(
            err(json!({"template_id": 1, "message_variables": ["a", 2]})),
            "fallback_template.message_variables[1]: expected a string"
        );
        assert_eq!(
            err(json!({"template_id": 1, "message_variables": {"bdy": []}})),
            "fallback_template.message_variables.bdy: unknown section (header, body, footer, buttons)"
        );
        assert!(
            err(json!({"template_id": 1, "header_attachment_url": "http://x/y"}))
                .contains("https://")
        );
        assert_eq!(
            err(json!({"template_id": 1, "destination_user_name": "é".repeat(201)})),
            "fallback_template.destination_user_name: 201 characters, limit 200"
        );
        Template::parse(&json!({"template_id": 1, "destination_user_name": "é".repeat(200)}))
            .unwrap();
        Template::parse(&json!({"template_id": u64::MAX})).unwrap();
    }
}
