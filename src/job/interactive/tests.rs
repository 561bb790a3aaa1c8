//! Every limit of docs/contract.md §3, on both sides of its bound.

use serde_json::{Value, json};

use super::*;

fn s(n: usize) -> String {
    // Accented characters: 2 bytes each, 1 character each.
    "é".repeat(n)
}

fn button_msg() -> Value {
    json!({
        "type": "button",
        "body": {"text": "Did your order arrive today?"},
        "action": {"buttons": [
            {"type": "reply", "reply": {"id": "yes", "title": "Yes, received"}},
            {"type": "reply", "reply": {"id": "not-yet", "title": "Not yet"}},
            {"type": "reply", "reply": {"id": "problem", "title": "There's a problem"}}
        ]}
    })
}

fn list_msg() -> Value {
    json!({
        "type": "list",
        "body": {"text": "How was your delivery?"},
        "action": {"button": "Choose", "sections": [
            {"title": "Delivery", "rows": [
                {"id": "ok", "title": "All good", "description": "Arrived intact"},
                {"id": "late", "title": "Late"}
            ]}
        ]}
    })
}

fn ok(v: &Value) {
    if let Err(e) = validate(v, Provider::CloudApi) {
        panic!("expected valid, got {e}");
    }
}

fn err(v: &Value) -> String {
    match validate(v, Provider::CloudApi) {
        Ok(()) => panic!("expected invalid: {v}"),
        Err(e) => e.to_string(),
    }
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    *v.pointer_mut(pointer).expect("pointer exists in fixture") = value;
    v
}

fn rows(n: usize, prefix: &str) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("{prefix}{i}"), "title": format!("Row {i}")}))
            .collect(),
    )
}

#[test]
fn sample_button_and_list_are_valid() {
    ok(&button_msg());
    ok(&list_msg());
}

#[test]
fn unknown_type_is_rejected() {
    let e = err(&with(button_msg(), "/type", json!("carousel")));
    assert!(e.starts_with("type: \"carousel\" is not one of"), "{e}");
}

#[test]
fn body_text_of_1024_characters_passes_and_1025_fails() {
    ok(&with(button_msg(), "/body/text", json!(s(1024))));
    assert_eq!(
        err(&with(button_msg(), "/body/text", json!(s(1025)))),
        "body.text: 1025 characters, limit 1024"
    );
}

#[test]
fn footer_text_of_60_passes_and_61_fails() {
    let mut m = button_msg();
    m["footer"] = json!({"text": s(60)});
    ok(&m);
    m["footer"] = json!({"text": s(61)});
    assert_eq!(err(&m), "footer.text: 61 characters, limit 60");
}

#[test]
fn text_header_of_60_passes_and_61_fails() {
    let mut m = button_msg();
    m["header"] = json!({"type": "text", "text": s(60)});
    ok(&m);
    m["header"] = json!({"type": "text", "text": s(61)});
    assert_eq!(err(&m), "header.text: 61 characters, limit 60");
}

#[test]
fn button_needs_body_text() {
    let mut m = button_msg();
    m.as_object_mut().unwrap().remove("body");
    assert_eq!(err(&m), "body: required");
    assert_eq!(
        err(&with(button_msg(), "/body", json!({}))),
        "body.text: required"
    );
}

#[test]
fn one_to_three_buttons() {
    let one = with(
        button_msg(),
        "/action/buttons",
        json!([{"type": "reply", "reply": {"id": "a", "title": "A"}}]),
    );
    ok(&one);
    assert_eq!(
        err(&with(button_msg(), "/action/buttons", json!([]))),
        "action.buttons: 0 buttons, at least 1 required"
    );
    let mut four = button_msg();
    four["action"]["buttons"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "reply", "reply": {"id": "d", "title": "D"}}));
    assert_eq!(err(&four), "action.buttons: 4 buttons, limit 3");
}

#[test]
fn button_type_must_be_reply() {
    let e = err(&with(button_msg(), "/action/buttons/1/type", json!("url")));
    assert_eq!(
        e,
        "action.buttons[1].type: \"url\", only \"reply\" is allowed"
    );
}

#[test]
fn button_id_of_256_passes_and_257_fails_and_empty_fails() {
    ok(&with(
        button_msg(),
        "/action/buttons/0/reply/id",
        json!(s(256)),
    ));
    assert_eq!(
        err(&with(
            button_msg(),
            "/action/buttons/0/reply/id",
            json!(s(257))
        )),
        "action.buttons[0].reply.id: 257 characters, limit 256"
    );
    assert!(err(&with(button_msg(), "/action/buttons/0/reply/id", json!(""))).contains("empty"));
}

#[test]
fn button_title_of_20_passes_and_21_fails_counting_characters() {
    // 20 emoji are 80 bytes but 20 characters.
    ok(&with(
        button_msg(),
        "/action/buttons/0/reply/title",
        json!("📦".repeat(20)),
    ));
    assert_eq!(
        err(&with(
            button_msg(),
            "/action/buttons/0/reply/title",
            json!(s(21))
        )),
        "action.buttons[0].reply.title: 21 characters, limit 20"
    );
    assert!(
        err(&with(
            button_msg(),
            "/action/buttons/0/reply/title",
            json!("")
        ))
        .contains("empty")
    );
}

#[test]
fn button_ids_and_titles_must_be_unique() {
    let e = err(&with(
        button_msg(),
        "/action/buttons/1/reply/id",
        json!("yes"),
    ));
    assert_eq!(
        e,
        "action.buttons[1].reply.id: duplicate \"yes\", must be unique"
    );
    let e = err(&with(
        button_msg(),
        "/action/buttons/2/reply/title",
        json!("Not yet"),
    ));
    assert!(
        e.starts_with("action.buttons[2].reply.title: duplicate"),
        "{e}"
    );
}

#[test]
fn wrong_json_type_is_named() {
    assert_eq!(
        err(&with(button_msg(), "/body/text", json!(5))),
        "body.text: expected a string, got a number"
    );
    assert_eq!(
        err(&with(button_msg(), "/action/buttons", json!({}))),
        "action.buttons: expected an array, got an object"
    );
}

#[test]
fn list_button_text_of_20_passes_and_21_fails() {
    ok(&with(list_msg(), "/action/button", json!(s(20))));
    assert_eq!(
        err(&with(list_msg(), "/action/button", json!(s(21)))),
        "action.button: 21 characters, limit 20"
    );
    assert!(err(&with(list_msg(), "/action/button", json!(""))).contains("empty"));
}

#[test]
fn list_with_ten_rows_passes_and_eleven_rows_is_rejected() {
    ok(&with(list_msg(), "/action/sections/0/rows", rows(10, "r")));
    assert_eq!(
        err(&with(list_msg(), "/action/sections/0/rows", rows(11, "r"))),
        "action.sections[0].rows: 11 rows, limit 10"
    );
}

#[test]
fn list_rows_are_limited_to_ten_in_total_across_sections() {
    let two = |a, b| {
        with(
            list_msg(),
            "/action/sections",
            json!([{"title": "A", "rows": rows(a, "a")}, {"title": "B", "rows": rows(b, "b")}]),
        )
    };
    ok(&two(5, 5));
    assert_eq!(
        err(&two(6, 5)),
        "action.sections: 11 rows in total, limit 10"
    );
}

#[test]
fn list_needs_one_to_ten_sections() {
    assert_eq!(
        err(&with(list_msg(), "/action/sections", json!([]))),
        "action.sections: 0 sections, at least 1 required"
    );
    let ten: Vec<Value> = (0..10)
        .map(|i| json!({"title": format!("S{i}"), "rows": [{"id": format!("r{i}"), "title": "x"}]}))
        .collect();
    ok(&with(
        list_msg(),
        "/action/sections",
        Value::Array(ten.clone()),
    ));
    let mut eleven = ten;
    eleven.push(json!({"title": "S10", "rows": [{"id": "r10", "title": "x"}]}));
    assert_eq!(
        err(&with(list_msg(), "/action/sections", Value::Array(eleven))),
        "action.sections: 11 sections, limit 10"
    );
}

#[test]
fn section_with_no_rows_is_rejected() {
    assert_eq!(
        err(&with(list_msg(), "/action/sections/0/rows", json!([]))),
        "action.sections[0].rows: 0 rows, at least 1 required"
    );
}

#[test]
fn row_id_of_200_passes_and_201_fails() {
    ok(&with(
        list_msg(),
        "/action/sections/0/rows/0/id",
        json!(s(200)),
    ));
    assert_eq!(
        err(&with(
            list_msg(),
            "/action/sections/0/rows/0/id",
            json!(s(201))
        )),
        "action.sections[0].rows[0].id: 201 characters, limit 200"
    );
}

#[test]
fn row_ids_must_be_unique_across_sections() {
    let m = with(
        list_msg(),
        "/action/sections",
        json!([{"title": "A", "rows": rows(1, "x")}, {"title": "B", "rows": rows(1, "x")}]),
    );
    assert_eq!(
        err(&m),
        "action.sections[1].rows[0].id: duplicate \"x0\", must be unique"
    );
}

#[test]
fn row_title_of_24_passes_and_25_fails() {
    ok(&with(
        list_msg(),
        "/action/sections/0/rows/0/title",
        json!(s(24)),
    ));
    assert_eq!(
        err(&with(
            list_msg(),
            "/action/sections/0/rows/0/title",
            json!(s(25))
        )),
        "action.sections[0].rows[0].title: 25 characters, limit 24"
    );
}

#[test]
fn row_description_of_72_passes_and_73_fails() {
    ok(&with(
        list_msg(),
        "/action/sections/0/rows/0/description",
        json!(s(72)),
    ));
    assert_eq!(
        err(&with(
            list_msg(),
            "/action/sections/0/rows/0/description",
            json!(s(73))
        )),
        "action.sections[0].rows[0].description: 73 characters, limit 72"
    );
}

#[test]
fn section_title_of_24_passes_and_25_fails() {
    ok(&with(list_msg(), "/action/sections/0/title", json!(s(24))));
    assert_eq!(
        err(&with(list_msg(), "/action/sections/0/title", json!(s(25)))),
        "action.sections[0].title: 25 characters, limit 24"
    );
}

#[test]
fn section_title_is_optional_for_one_section_and_required_for_two() {
    let mut one = list_msg();
    one["action"]["sections"][0]
        .as_object_mut()
        .unwrap()
        .remove("title");
    ok(&one);
    let two = with(
        list_msg(),
        "/action/sections",
        json!([{"rows": rows(1, "a")}, {"title": "B", "rows": rows(1, "b")}]),
    );
    assert_eq!(
        err(&two),
        "action.sections[0].title: required when there is more than one section"
    );
}

#[test]
fn list_header_must_be_text() {
    let mut m = list_msg();
    m["header"] = json!({"type": "image", "image": {"link": "https://x"}});
    assert!(err(&m).starts_with("header.type"));
    m["header"] = json!({"type": "text", "text": "Delivery"});
    ok(&m);
}

#[test]
fn product_needs_catalog_and_retailer_ids() {
    let m = json!({"type": "product", "action": {"catalog_id": "c1", "product_retailer_id": "p1"}});
    ok(&m);
    let e = err(&json!({"type": "product", "action": {"catalog_id": "c1"}}));
    assert_eq!(e, "action.product_retailer_id: required");
}

fn product_list(sections: Value) -> Value {
    json!({"type": "product_list", "header": {"type": "text", "text": "Picks"},
           "body": {"text": "For you"}, "action": {"catalog_id": "c1", "sections": sections}})
}

fn items(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"product_retailer_id": format!("p{i}")}))
            .collect(),
    )
}

#[test]
fn product_list_allows_thirty_items_not_thirty_one() {
    ok(&product_list(
        json!([{"title": "A", "product_items": items(30)}]),
    ));
    let e = err(&product_list(json!([
        {"title": "A", "product_items": items(20)},
        {"title": "B", "product_items": items(11)}
    ])));
    assert_eq!(e, "action.sections: 31 items in total, limit 30");
}

#[test]
fn product_list_needs_a_text_header() {
    let mut m = product_list(json!([{"title": "A", "product_items": items(1)}]));
    m.as_object_mut().unwrap().remove("header");
    assert_eq!(err(&m), "header: required");
}

#[test]
fn product_list_allows_ten_sections_not_eleven() {
    let secs = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"title": format!("S{i}"), "product_items": items(1)}))
                .collect(),
        )
    };
    ok(&product_list(secs(10)));
    assert_eq!(
        err(&product_list(secs(11))),
        "action.sections: 11 sections, limit 10"
    );
}

fn flow_msg() -> Value {
    json!({"type": "flow", "body": {"text": "Tell us more"}, "action": {"name": "flow",
           "parameters": {"flow_message_version": "3", "flow_id": "123", "flow_cta": "Open"}}})
}

#[test]
fn flow_needs_its_parameters() {
    ok(&flow_msg());
    let mut m = flow_msg();
    m["action"]["parameters"]
        .as_object_mut()
        .unwrap()
        .remove("flow_id");
    assert_eq!(
        err(&m),
        "action.parameters: one of flow_id and flow_name is required"
    );
}

#[test]
fn flow_and_catalog_are_rejected_on_twilio_channels() {
    let e = validate(&flow_msg(), Provider::Twilio).unwrap_err();
    assert!(e.to_string().contains("Cloud API channels only"), "{e}");
    let catalog = json!({"type": "catalog_message", "body": {"text": "Shop"},
                         "action": {"name": "catalog_message"}});
    ok(&catalog);
    assert!(validate(&catalog, Provider::Twilio).is_err());
    assert!(validate(&button_msg(), Provider::Twilio).is_ok());
}
