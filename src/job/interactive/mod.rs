//! Local validation of `waba_interactive_message` against the limits Octopods
//! and Meta document (docs/contract.md §3). Lengths count Unicode characters. The first
//! problem found is reported with its JSON path and the limit.
//!
//! The sandbox runs the same checks, as Octopods would on its side.

use std::{
    collections::HashSet,
    fmt::{self, Display},
};

use serde_json::{Map, Value};

use crate::config::Provider;

/// A rule the message breaks: `path: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct Invalid {
    pub path: String,
    pub problem: String,
}

type Check<T = ()> = Result<T, Invalid>;

fn fail<T>(path: impl Display, problem: impl Into<String>) -> Check<T> {
    Err(Invalid {
        path: path.to_string(),
        problem: problem.into(),
    })
}

/// A field's JSON path, written out only when a check fails: a valid message
/// (every job) builds no path strings. `&str`, [`Field`] and [`Item`] are
/// paths.
pub(crate) trait Path: Display + Copy {}
impl<T: Display + Copy> Path for T {}

/// `parent.name`.
#[derive(Clone, Copy)]
pub(crate) struct Field<P>(P, &'static str);

/// `parent[index]`.
#[derive(Clone, Copy)]
pub(crate) struct Item<P>(P, usize);

impl<P: Display> Display for Field<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl<P: Display> Display for Item<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

/// The interactive message types Octopods accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Button,
    List,
    Product,
    ProductList,
    Flow,
    CatalogMessage,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Button,
        Kind::List,
        Kind::Product,
        Kind::ProductList,
        Kind::Flow,
        Kind::CatalogMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Button => "button",
            Kind::List => "list",
            Kind::Product => "product",
            Kind::ProductList => "product_list",
            Kind::Flow => "flow",
            Kind::CatalogMessage => "catalog_message",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `flow` and `catalog_message` exist on the Cloud API only.
    fn cloud_api_only(self) -> bool {
        matches!(self, Kind::Flow | Kind::CatalogMessage)
    }
}

/// One option a customer can tap: a reply button or a list row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    pub id: String,
    pub title: String,
}

/// The options of a (validated) `button` or `list` message, in order; none
/// for the other types. What a customer's tap comes back as (its title).
pub fn choices(message: &Value) -> Vec<Choice> {
    let choice = |v: &Value| {
        Some(Choice {
            id: v.get("id")?.as_str()?.to_owned(),
            title: v.get("title")?.as_str()?.to_owned(),
        })
    };
    let action = message.get("action");
    match message.get("type").and_then(Value::as_str) {
        Some("button") => action
            .and_then(|a| a.get("buttons"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|b| choice(b.get("reply")?))
            .collect(),
        Some("list") => action
            .and_then(|a| a.get("sections"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("rows")?.as_array())
            .flatten()
            .filter_map(choice)
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks one interactive message for a channel of the given provider.
pub fn validate(message: &Value, provider: Provider) -> Check {
    let m = object(message, "waba_interactive_message")?;
    let name = required_str(m, "type", "type")?;
    let Some(kind) = Kind::parse(name) else {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return fail("type", format!("{name:?} is not one of {}", all.join(", ")));
    };
    if provider == Provider::Twilio && kind.cloud_api_only() {
        return fail(
            "type",
            format!("{name} is available on Cloud API channels only, this channel is twilio"),
        );
    }
    common(m)?;
    let action = object_at(m, "action", "action")?;
    match kind {
        Kind::Button => button(m, action),
        Kind::List => list(m, action),
        Kind::Product => product(action),
        Kind::ProductList => product_list(m, action),
        Kind::Flow => flow(m, action),
        Kind::CatalogMessage => catalog_message(m, action),
    }
}

/// Rules for every type: body, footer and text header lengths.
fn common(m: &Map<String, Value>) -> Check {
    if let Some(body) = optional_object(m, "body", "body")? {
        length(
            optional_str(body, "text", "body.text")?,
            "body.text",
            1,
            1024,
        )?;
    }
    if let Some(footer) = optional_object(m, "footer", "footer")? {
        length(
            optional_str(footer, "text", "footer.text")?,
            "footer.text",
            1,
            60,
        )?;
    }
    if let Some(header) = optional_object(m, "header", "header")? {
        required_str(header, "type", "header.type")?;
        if header.get("type").and_then(Value::as_str) == Some("text") {
            length(
                Some(required_str(header, "text", "header.text")?),
                "header.text",
                1,
                60,
            )?;
        }
    }
    Ok(())
}

fn body_text_required(m: &Map<String, Value>) -> Check {
    let body = object_at(m, "body", "body")?;
    required_str(body, "text", "body.text").map(|_| ())
}

fn button(m: &Map<String, Value>, action: &Map<String, Value>) -> Check {
    body_text_required(m)?;
    let buttons = array_at(action, "buttons", "action.buttons")?;
    count(buttons.len(), "action.buttons", "buttons", 1, 3)?;
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    for (i, b) in buttons.iter().enumerate() {
        let p = Item("action.buttons", i);
        let b = object(b, p)?;
        let t = required_str(b, "type", Field(p, "type"))?;
        if t != "reply" {
            return fail(
                Field(p, "type"),
                format!("{t:?}, only \"reply\" is allowed"),
            );
        }
        let reply = object_at(b, "reply", Field(p, "reply"))?;
        let id = required_str(reply, "id", Field(p, "reply.id"))?;
        length(Some(id), Field(p, "reply.id"), 1, 256)?;
        let title = required_str(reply, "title", Field(p, "reply.title"))?;
        length(Some(title), Field(p, "reply.title"), 1, 20)?;
        unique(&mut ids, id, Field(p, "reply.id"))?;
        unique(&mut titles, title, Field(p, "reply.title"))?;
    }
    Ok(())
}

fn list(m: &Map<String, Value>, action: &Map<String, Value>) -> Check {
    body_text_required(m)?;
    if let Some(header) = optional_object(m, "header", "header")? {
        let t = header
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if t != "text" {
            return fail(
                "header.type",
                format!("{t:?}, a list header must be \"text\""),
            );
        }
    }
    let button_text = required_str(action, "button", "action.button")?;
    length(Some(button_text), "action.button", 1, 20)?;
    let sections = array_at(action, "sections", "action.sections")?;
    count(sections.len(), "action.sections", "sections", 1, 10)?;
    let mut row_ids = HashSet::new();
    let mut total_rows: usize = 0;
    for (i, s) in sections.iter().enumerate() {
        let p = Item("action.sections", i);
        let s = object(s, p)?;
        let title = optional_str(s, "title", Field(p, "title"))?;
        if title.is_none() && sections.len() > 1 {
            return fail(
                Field(p, "title"),
                "required when there is more than one section",
            );
        }
        length(title, Field(p, "title"), 1, 24)?;
        let rows_p = Field(p, "rows");
        let rows = array_at(s, "rows", rows_p)?;
        count(rows.len(), rows_p, "rows", 1, 10)?;
        total_rows = total_rows.saturating_add(rows.len());
        for (j, r) in rows.iter().enumerate() {
            let rp = Item(rows_p, j);
            let r = object(r, rp)?;
            let id = required_str(r, "id", Field(rp, "id"))?;
            length(Some(id), Field(rp, "id"), 1, 200)?;
            unique(&mut row_ids, id, Field(rp, "id"))?;
            let title = required_str(r, "title", Field(rp, "title"))?;
            length(Some(title), Field(rp, "title"), 1, 24)?;
            let description = optional_str(r, "description", Field(rp, "description"))?;
            length(description, Field(rp, "description"), 0, 72)?;
        }
    }
    if total_rows > 10 {
        return fail(
            "action.sections",
            format!("{total_rows} rows in total, limit 10"),
        );
    }
    Ok(())
}

fn product(action: &Map<String, Value>) -> Check {
    non_empty(action, "catalog_id", "action.catalog_id")?;
    non_empty(action, "product_retailer_id", "action.product_retailer_id")
}

fn product_list(m: &Map<String, Value>, action: &Map<String, Value>) -> Check {
    body_text_required(m)?;
    let header = object_at(m, "header", "header")?;
    if header.get("type").and_then(Value::as_str) != Some("text") {
        return fail("header.type", "a product_list needs a \"text\" header");
    }
    non_empty(action, "catalog_id", "action.catalog_id")?;
    let sections = array_at(action, "sections", "action.sections")?;
    count(sections.len(), "action.sections", "sections", 1, 10)?;
    let mut total: usize = 0;
    for (i, s) in sections.iter().enumerate() {
        let p = Item("action.sections", i);
        let s = object(s, p)?;
        let title = optional_str(s, "title", Field(p, "title"))?;
        if title.is_none() && sections.len() > 1 {
            return fail(
                Field(p, "title"),
                "required when there is more than one section",
            );
        }
        length(title, Field(p, "title"), 1, 24)?;
        let items_p = Field(p, "product_items");
        let items = array_at(s, "product_items", items_p)?;
        count(items.len(), items_p, "items", 1, 30)?;
        total = total.saturating_add(items.len());
        for (j, item) in items.iter().enumerate() {
            let ip = Item(items_p, j);
            let item = object(item, ip)?;
            non_empty(
                item,
                "product_retailer_id",
                Field(ip, "product_retailer_id"),
            )?;
        }
    }
    if total > 30 {
        return fail(
            "action.sections",
            format!("{total} items in total, limit 30"),
        );
    }
    Ok(())
}

fn flow(m: &Map<String, Value>, action: &Map<String, Value>) -> Check {
    body_text_required(m)?;
    let name = required_str(action, "name", "action.name")?;
    if name != "flow" {
        return fail("action.name", format!("{name:?}, must be \"flow\""));
    }
    let params = object_at(action, "parameters", "action.parameters")?;
    non_empty(
        params,
        "flow_message_version",
        "action.parameters.flow_message_version",
    )?;
    let cta = required_str(params, "flow_cta", "action.parameters.flow_cta")?;
    length(Some(cta), "action.parameters.flow_cta", 1, 30)?;
    if !params.contains_key("flow_id") && !params.contains_key("flow_name") {
        return fail(
            "action.parameters",
            "one of flow_id and flow_name is required",
        );
    }
    Ok(())
}

fn catalog_message(m: &Map<String, Value>, action: &Map<String, Value>) -> Check {
    body_text_required(m)?;
    let name = required_str(action, "name", "action.name")?;
    if name != "catalog_message" {
        return fail(
            "action.name",
            format!("{name:?}, must be \"catalog_message\""),
        );
    }
    Ok(())
}

// ---- small typed accessors, each naming the path on failure ----

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn object(v: &Value, path: impl Path) -> Check<&Map<String, Value>> {
    v.as_object().ok_or_else(|| Invalid {
        path: path.to_string(),
        problem: format!("expected an object, got {}", type_name(v)),
    })
}

fn object_at<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: impl Path,
) -> Check<&'a Map<String, Value>> {
    match m.get(key) {
        Some(v) => object(v, path),
        None => fail(path, "required"),
    }
}

fn optional_object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: impl Path,
) -> Check<Option<&'a Map<String, Value>>> {
    m.get(key).map(|v| object(v, path)).transpose()
}

fn array_at<'a>(m: &'a Map<String, Value>, key: &str, path: impl Path) -> Check<&'a Vec<Value>> {
    match m.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(v) => fail(path, format!("expected an array, got {}", type_name(v))),
        None => fail(path, "required"),
    }
}

fn optional_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    path: impl Path,
) -> Check<Option<&'a str>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => fail(path, format!("expected a string, got {}", type_name(v))),
    }
}

fn required_str<'a>(m: &'a Map<String, Value>, key: &str, path: impl Path) -> Check<&'a str> {
    optional_str(m, key, path)?.map_or_else(|| fail(path, "required"), Ok)
}

fn non_empty(m: &Map<String, Value>, key: &str, path: impl Path) -> Check {
    match m.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        Some(Value::Number(_)) => Ok(()),
        Some(Value::String(_)) => fail(path, "must not be empty"),
        Some(v) => fail(path, format!("expected a string, got {}", type_name(v))),
        None => fail(path, "required"),
    }
}

/// Checks a text's length in characters; `None` passes (presence is checked elsewhere).
fn length(s: Option<&str>, path: impl Path, min: usize, max: usize) -> Check {
    let Some(s) = s else { return Ok(()) };
    let n = s.chars().count();
    if n > max {
        return fail(path, format!("{n} characters, limit {max}"));
    }
    if n < min {
        return fail(path, format!("empty, at least {min} character required"));
    }
    Ok(())
}

fn count(n: usize, path: impl Path, what: &str, min: usize, max: usize) -> Check {
    if n > max {
        return fail(path, format!("{n} {what}, limit {max}"));
    }
    if n < min {
        return fail(path, format!("{n} {what}, at least {min} required"));
    }
    Ok(())
}

fn unique<'a>(seen: &mut HashSet<&'a str>, value: &'a str, path: impl Path) -> Check {
    if !seen.insert(value) {
        return fail(path, format!("duplicate {value:?}, must be unique"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
