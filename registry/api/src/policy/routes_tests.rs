use serde_json::json;

use super::super::{Document, PolicyKind};
use super::*;

fn parse(doc: Value) -> Result<Routes, PolicyError> {
    match Document::from_value(PolicyKind::Routes, doc)? {
        Document::Routes(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

/// A rule matching `m`, all to every instance.
fn rule(m: Value) -> Value {
    json!({"matches": [m], "backends": [{"weight": 100}]})
}

fn error(doc: Value) -> PolicyError {
    parse(doc).expect_err("refused")
}

#[test]
fn the_contract_example_reads_as_written() {
    let r = parse(json!({
        "version": 1,
        "rules": [{
            "name": "testers",
            "matches": [
                {"path": {"prefix": "/api"}, "method": "GET", "headers": {"x-canary": "1"}},
                {"grpc": {"service": "recommendations.Recommendations", "method": "Recommend"}}
            ],
            "backends": [{"subset": "version=v1", "weight": 90}, {"subset": "version=v2", "weight": 10}],
            "timeout": "2s",
            "retries": {"attempts": 2, "on": ["connect-failure", "reset", "5xx", "unavailable"]}
        }]
    }))
    .unwrap();
    let rule = &r.rules[0];
    assert_eq!(rule.name, "testers");
    assert_eq!(rule.matches[0].path, Some(PathMatch::Prefix("/api".into())));
    assert_eq!(rule.timeout, Some(Duration::from_secs(2)));
    assert_eq!(rule.backends[1].selector(), "version=v2".parse().unwrap());
    let on = &rule.retries.as_ref().unwrap().on;
    assert_eq!(
        on,
        &RetryOn::DEFAULT[..4],
        "as listed: timeouts not retried"
    );
}

#[test]
fn normalising_fills_defaults_names_rules_and_lower_cases_headers() {
    let r = parse(json!({"rules": [
        rule(json!({"headers": {"X-Canary": "1"}})),
        {"matches": [{"method": "POST"}], "backends": [{"weight": 100}], "retries": {"attempts": 1}},
    ]}))
    .unwrap();
    assert_eq!(r.version, 1);
    assert_eq!(r.rules[0].name, "rule-1");
    assert_eq!(r.rules[1].name, "rule-2");
    assert_eq!(
        r.rules[0].matches[0]
            .headers
            .get("x-canary")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(r.rules[1].retries.as_ref().unwrap().on, RetryOn::DEFAULT);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["rules"][0]["matches"][0],
        json!({"headers": {"x-canary": "1"}})
    );
    assert_eq!(
        json["rules"][0]["backends"][0],
        json!({"subset": "", "weight": 100})
    );
    // What is stored reads back as the same document.
    assert_eq!(parse(json).unwrap(), r);
}

#[test]
fn no_rules_is_a_valid_document() {
    assert!(parse(json!({})).unwrap().rules.is_empty());
}

#[test]
fn weights_must_add_up_to_100() {
    let e =
        error(json!({"rules": [{"backends": [{"weight": 80}, {"subset": "v=2", "weight": 10}]}]}));
    assert_eq!(e.field, "rules[0].backends");
    assert_eq!(e.message, "weights add up to 90; they must add up to 100");
    let e = error(
        json!({"rules": [rule(json!({})), {"matches": [{"method": "GET"}], "backends": [{"weight": 101}]}]}),
    );
    // The weight is checked before the overlap: the second rule's own error comes first.
    assert_eq!(e.field, "rules[1].backends[0].weight");
    assert!(parse(json!({"rules": [{"backends": [{"subset": "v=1", "weight": 0}, {"subset": "v=2", "weight": 100}]}]})).is_ok());
}

#[test]
fn backends_are_one_to_sixteen_distinct_subsets() {
    assert_eq!(
        error(json!({"rules": [{"backends": []}]})).field,
        "rules[0].backends"
    );
    let many: Vec<Value> = (0..17)
        .map(|i| json!({"subset": format!("n={i}"), "weight": if i == 0 { 100 } else { 0 }}))
        .collect();
    assert_eq!(
        error(json!({"rules": [{"backends": many}]})).field,
        "rules[0].backends"
    );
    let e = error(
        json!({"rules": [{"backends": [{"subset": "a=1,b=2", "weight": 50}, {"subset": "b=2,a=1", "weight": 50}]}]}),
    );
    assert_eq!(e.field, "rules[0].backends[1].subset");
    assert!(e.message.contains("backends[0]"), "{e}");
    let e = error(json!({"rules": [{"backends": [{"subset": "version", "weight": 100}]}]}));
    assert_eq!(e.field, "rules[0].backends[0].subset");
    assert!(e.message.contains("key=value"), "{e}");
}

#[test]
fn paths_start_with_a_slash_and_are_exactly_one_kind() {
    let e = error(json!({"rules": [rule(json!({"path": {"prefix": "api"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0].path");
    assert!(e.message.contains("must start with '/'"), "{e}");
    let e = error(json!({"rules": [rule(json!({"path": {"exact": "/a", "prefix": "/b"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0]");
    let e = error(json!({"rules": [rule(json!({"path": {"regex": "/.*"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0]");
    assert!(e.message.contains("regex"), "{e}");
}

#[test]
fn unknown_fields_are_errors_where_they_are() {
    let e = error(json!({"rules": [rule(json!({"pth": {"exact": "/"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0]");
    assert!(e.message.contains("unknown field `pth`"), "{e}");
    let e = error(json!({"rules": [{"backends": [{"weight": 100, "zone": "a"}]}]}));
    assert_eq!(e.field, "rules[0].backends[0]");
    let e = error(
        json!({"rules": [{"backends": [{"weight": 100}], "retries": {"attempts": 1, "budget": 3}}]}),
    );
    assert_eq!(e.field, "rules[0].retries");
    let e = error(json!({"rules": [{"backends": [{"weight": 100}], "mirror": "x"}]}));
    assert_eq!(e.field, "rules[0]");
    let e = error(json!({"rule": []}));
    assert_eq!(e.field, "");
    let e = error(
        json!({"rules": [{"backends": [{"weight": 100}], "retries": {"attempts": 1, "on": ["gateway"]}}]}),
    );
    assert_eq!(e.field, "rules[0].retries");
}

#[test]
fn methods_are_upper_case_tokens() {
    let e = error(json!({"rules": [rule(json!({"method": "get"}))]}));
    assert_eq!(e.field, "rules[0].matches[0].method");
    assert!(e.message.contains("upper case (\"GET\")"), "{e}");
    assert_eq!(
        error(json!({"rules": [rule(json!({"method": "GE T"}))]})).field,
        "rules[0].matches[0].method"
    );
    assert!(parse(json!({"rules": [rule(json!({"method": "PURGE"}))]})).is_ok());
}

#[test]
fn header_names_must_be_valid_and_distinct_ignoring_case() {
    let e = error(json!({"rules": [rule(json!({"headers": {"X-A": "1", "x-a": "2"}}))]}));
    assert!(
        e.field.starts_with("rules[0].matches[0].headers."),
        "{}",
        e.field
    );
    assert!(e.message.contains("named twice"), "{e}");
    let e = error(json!({"rules": [rule(json!({"headers": {"bad name": "1"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0].headers.bad name");
    let e = error(json!({"rules": [rule(json!({"headers": {"x": "a\nb"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0].headers.x");
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("h{i}"), json!("v"))).collect();
    assert_eq!(
        error(json!({"rules": [rule(json!({"headers": many}))]})).field,
        "rules[0].matches[0].headers"
    );
}

#[test]
fn grpc_names_have_no_slash() {
    let e = error(json!({"rules": [rule(json!({"grpc": {"service": "pkg.Svc/Get"}}))]}));
    assert_eq!(e.field, "rules[0].matches[0].grpc.service");
    let e = error(json!({"rules": [rule(json!({"grpc": {"service": "pkg.Svc", "method": ""}}))]}));
    assert_eq!(e.field, "rules[0].matches[0].grpc.method");
    assert!(parse(json!({"rules": [rule(json!({"grpc": {"service": "pkg.Svc"}}))]})).is_ok());
}

#[test]
fn names_follow_the_rules_and_are_unique() {
    let named = |name: &str| json!({"name": name, "matches": [{"method": "GET"}], "backends": [{"weight": 100}]});
    let e = error(json!({"rules": [named("Canary")]}));
    assert_eq!(e.field, "rules[0].name");
    assert_eq!(
        error(json!({"rules": [named(&"a".repeat(64))]})).field,
        "rules[0].name"
    );
    // The default name of the first rule is taken by the second.
    let e = error(json!({"rules": [rule(json!({"method": "POST"})), named("rule-1")]}));
    assert_eq!(e.field, "rules[1].name");
    assert!(e.message.contains("rules[0]"), "{e}");
}

#[test]
fn a_rule_after_a_catch_all_is_an_error_naming_both() {
    for catch_all in [
        json!({"backends": [{"weight": 100}]}),
        rule(json!({})),
        json!({"matches": [], "backends": [{"weight": 100}]}),
    ] {
        let e = error(json!({"rules": [catch_all, rule(json!({"method": "GET"}))]}));
        assert_eq!(e.field, "rules[1]");
        assert!(e.message.contains("\"rule-2\" can never match"), "{e}");
        assert!(e.message.contains("\"rule-1\""), "{e}");
    }
    // A catch-all last is what a default route is.
    assert!(parse(json!({"rules": [rule(json!({"method": "GET"})), json!({"backends": [{"weight": 100}]})]})).is_ok());
}

#[test]
fn identical_matches_are_an_error_naming_both_rules() {
    let a = json!({"method": "GET", "headers": {"x-canary": "1"}});
    let b = json!({"path": {"prefix": "/a"}});
    let first = json!({"name": "first", "matches": [a, b], "backends": [{"weight": 100}]});
    // The same matches in another order and header-name case.
    let again = json!({"name": "again", "matches": [b, {"headers": {"X-Canary": "1"}, "method": "GET"}],
                       "backends": [{"subset": "v=2", "weight": 100}]});
    let e = error(json!({"rules": [first, again]}));
    assert_eq!(e.field, "rules[1].matches");
    assert!(
        e.message.contains("\"again\"") && e.message.contains("\"first\""),
        "{e}"
    );
    // A subset of the matches is not identical: it is a narrower rule that can still win.
    let narrower = json!({"matches": [a], "backends": [{"weight": 100}]});
    assert!(parse(json!({"rules": [narrower, first]})).is_ok());
}

#[test]
fn counts_are_bounded() {
    let rules: Vec<Value> = (0..65)
        .map(|i| rule(json!({"path": {"exact": format!("/{i}")}})))
        .collect();
    assert_eq!(error(json!({"rules": rules})).field, "rules");
    let matches: Vec<Value> = (0..17)
        .map(|i| json!({"path": {"exact": format!("/{i}")}}))
        .collect();
    let e = error(json!({"rules": [{"matches": matches, "backends": [{"weight": 100}]}]}));
    assert_eq!(e.field, "rules[0].matches");
}

#[test]
fn timeouts_and_retries_are_bounded() {
    let with = |extra: Value| {
        let mut r = json!({"backends": [{"weight": 100}]});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"rules": [r]})
    };
    assert_eq!(
        error(with(json!({"timeout": "0s"}))).field,
        "rules[0].timeout"
    );
    let e = error(with(json!({"timeout": "soon"})));
    assert_eq!(e.field, "rules[0]");
    assert!(e.message.contains("\"soon\""), "{e}");
    assert_eq!(
        error(with(json!({"retries": {"attempts": 11}}))).field,
        "rules[0].retries.attempts"
    );
    assert_eq!(
        error(with(
            json!({"retries": {"attempts": 1, "on": ["5xx", "5xx"]}})
        ))
        .field,
        "rules[0].retries.on"
    );
    let r = parse(with(
        json!({"timeout": "250ms", "retries": {"attempts": 0, "on": ["timeout"]}}),
    ))
    .unwrap();
    assert_eq!(r.rules[0].timeout, Some(Duration::from_millis(250)));
    assert_eq!(r.rules[0].retries.as_ref().unwrap().on, [RetryOn::Timeout]);
    assert_eq!(
        serde_json::to_value(&r).unwrap()["rules"][0]["timeout"],
        "250ms"
    );
}
