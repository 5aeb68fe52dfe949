use serde_json::json;

use super::super::{Document, PolicyKind};
use super::*;

fn parse(doc: Value) -> Result<Intentions, PolicyError> {
    match Document::from_value(PolicyKind::Intentions, doc)? {
        Document::Intentions(i) => Ok(i),
        other => panic!("{other:?}"),
    }
}

fn error(doc: Value) -> PolicyError {
    parse(doc).expect_err("refused")
}

fn rules(rules: Value) -> Value {
    json!({ "rules": rules })
}

#[test]
fn the_contract_example_reads_as_written() {
    let i = parse(json!({
        "version": 1,
        "default": "allow",
        "rules": [
            {"name": "no-batch", "from": "batch", "action": "deny"},
            {"name": "readers", "from": "*", "action": "deny", "mode": "shadow",
             "methods": ["POST", "DELETE"], "paths": ["/admin"], "grpc": ["pkg.Svc/Write", "pkg.Admin/*"]}
        ]
    }))
    .unwrap();
    assert_eq!(i.default, Action::Allow);
    assert_eq!(i.rules[0].mode, Mode::Enforce);
    assert_eq!(i.rules[1].mode, Mode::Shadow);
    assert_eq!(i.rules[1].grpc.as_ref().unwrap().len(), 2);
}

#[test]
fn defaults_are_filled() {
    let i = parse(rules(json!([{"from": "web", "action": "allow"}]))).unwrap();
    assert_eq!(i.version, 1);
    assert_eq!(i.default, Action::Allow);
    assert_eq!(i.rules[0].name, "rule-1");
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(
        json["rules"][0],
        json!({"name": "rule-1", "from": "web", "action": "allow", "mode": "enforce"})
    );
    assert_eq!(json["default"], "allow");
    assert_eq!(parse(json).unwrap(), i);
    assert_eq!(
        parse(json!({"default": "deny"})).unwrap().default,
        Action::Deny
    );
}

#[test]
fn callers_are_any_a_service_or_a_spiffe_id() {
    for from in [
        "*",
        "web",
        "spiffe://mesh.local/service/web",
        "spiffe://other.org/ns/a/sa/b",
    ] {
        assert!(
            parse(rules(json!([{"from": from, "action": "deny"}]))).is_ok(),
            "{from}"
        );
    }
    for from in [
        "",
        "Web",
        "web*",
        "spiffe://",
        "spiffe://mesh.local",
        "spiffe://mesh.local/",
    ] {
        let e = error(rules(json!([{"from": from, "action": "deny"}])));
        assert_eq!(e.field, "rules[0].from", "{from}");
    }
}

#[test]
fn a_shadow_allow_rule_is_an_error() {
    let e = error(rules(
        json!([{"from": "*", "action": "allow", "mode": "shadow"}]),
    ));
    assert_eq!(e.field, "rules[0].mode");
    assert!(e.message.contains("shadow rule must deny"), "{e}");
}

#[test]
fn the_same_scope_with_opposite_actions_is_an_error_naming_both() {
    let e = error(rules(json!([
        {"name": "a", "from": "web", "action": "allow", "methods": ["GET", "POST"]},
        {"name": "b", "from": "web", "action": "deny", "methods": ["POST", "GET"]},
    ])));
    assert_eq!(e.field, "rules[1]");
    assert!(
        e.message.contains("\"a\"") && e.message.contains("\"b\""),
        "{e}"
    );
    // A narrower or wider scope is not the same one.
    assert!(
        parse(rules(json!([
            {"from": "web", "action": "allow", "methods": ["GET"]},
            {"from": "web", "action": "deny"},
        ])))
        .is_ok()
    );
    // The same action twice is redundant, not contradictory.
    assert!(
        parse(rules(json!([
            {"from": "web", "action": "deny", "mode": "shadow"},
            {"from": "web", "action": "deny"},
        ])))
        .is_ok()
    );
}

#[test]
fn narrowing_lists_are_checked_item_by_item() {
    let with = |key: &str, list: Value| rules(json!([{"from": "*", "action": "deny", key: list}]));
    assert_eq!(
        error(with("paths", json!(["admin"]))).field,
        "rules[0].paths[0]"
    );
    assert_eq!(
        error(with("methods", json!(["GET", "post"]))).field,
        "rules[0].methods[1]"
    );
    assert_eq!(
        error(with("grpc", json!(["pkg.Svc"]))).field,
        "rules[0].grpc[0]"
    );
    assert_eq!(
        error(with("grpc", json!(["pkg.Svc/"]))).field,
        "rules[0].grpc[0]"
    );
    assert_eq!(
        error(with("grpc", json!(["/Write"]))).field,
        "rules[0].grpc[0]"
    );
    let e = error(with("methods", json!([])));
    assert_eq!(e.field, "rules[0].methods");
    assert!(e.message.contains("leave it out"), "{e}");
    assert!(parse(with("grpc", json!(["pkg.Svc/*", "pkg.Svc/Get"]))).is_ok());
}

#[test]
fn unknown_fields_and_values_are_errors_at_their_rule() {
    let e = error(rules(
        json!([{"from": "*", "action": "deny"}, {"from": "*", "action": "deny", "ports": [80]}]),
    ));
    assert_eq!(e.field, "rules[1]");
    assert!(e.message.contains("unknown field `ports`"), "{e}");
    assert_eq!(
        error(rules(json!([{"from": "*", "action": "block"}]))).field,
        "rules[0]"
    );
    assert_eq!(error(rules(json!([{"action": "deny"}]))).field, "rules[0]");
    assert_eq!(error(json!({"default": "maybe"})).field, "");
}

#[test]
fn names_and_counts_are_bounded() {
    assert_eq!(
        error(rules(json!([{"name": "A", "from": "*", "action": "deny"}]))).field,
        "rules[0].name"
    );
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"from": "*", "action": "deny", "paths": [format!("/{i}")]}))
        .collect();
    assert_eq!(error(rules(json!(many))).field, "rules");
}
