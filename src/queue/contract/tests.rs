//! The contract checker and validator, case by case.
use super::*;
use serde_json::json;

fn proposal_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "proposal_id", "instance_id", "impact_score", "timestamp"],
        "additionalProperties": false,
        "properties": {
            "type": {"const": "proposal_for_consensus"},
            "proposal_id": {"type": "string", "format": "uuid"},
            "instance_id": {"type": "string", "minLength": 1},
            "agent_type": {"enum": ["BugFixerAgent", "RefactorAgent"]},
            "impact_score": {"type": "number", "minimum": 0, "maximum": 10},
            "risk_score": {"type": "number", "exclusiveMinimum": 0},
            "retry_count": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "code_change": {"type": "object", "required": ["file"], "properties": {"file": {"type": "string"}}},
            "timestamp": {"type": "string", "format": "date-time"},
            "note": {"type": ["string", "null"]}
        }
    })
}

fn good() -> Value {
    json!({
        "type": "proposal_for_consensus",
        "proposal_id": "123e4567-e89b-12d3-a456-426614174000",
        "instance_id": "singularity_1",
        "agent_type": "BugFixerAgent",
        "impact_score": 8.0,
        "risk_score": 1.0,
        "retry_count": 0,
        "tags": ["a"],
        "code_change": {"file": "lib/x.ex"},
        "timestamp": "2026-11-22T21:00:00.123456Z",
        "note": null
    })
}

fn violation(mut edit: impl FnMut(&mut serde_json::Map<String, Value>)) -> String {
    let mut v = good();
    edit(v.as_object_mut().unwrap());
    validate(&proposal_schema(), &v).unwrap_err().to_string()
}

#[test]
fn a_valid_proposal_passes() {
    check_schema(&proposal_schema()).unwrap();
    validate(&proposal_schema(), &good()).unwrap();
}

#[test]
fn each_rule_names_the_field_and_the_rule() {
    assert_eq!(
        violation(|m| {
            m.remove("instance_id");
        }),
        "at $.instance_id: is required"
    );
    assert_eq!(
        violation(|m| {
            m.insert("impact_score".into(), json!(12));
        }),
        "at $.impact_score: must be at most 10, got 12"
    );
    assert_eq!(
        violation(|m| {
            m.insert("impact_score".into(), json!("high"));
        }),
        "at $.impact_score: must be of type number, got string"
    );
    assert_eq!(
        violation(|m| {
            m.insert("risk_score".into(), json!(0));
        }),
        "at $.risk_score: must be greater than 0, got 0"
    );
    assert_eq!(
        violation(|m| {
            m.insert("retry_count".into(), json!(1.5));
        }),
        "at $.retry_count: must be of type integer, got number"
    );
    assert_eq!(
        violation(|m| {
            m.insert("agent_type".into(), json!("Other"));
        }),
        "at $.agent_type: must be one of \"BugFixerAgent\", \"RefactorAgent\", got \"Other\""
    );
    assert_eq!(
        violation(|m| {
            m.insert("type".into(), json!("consensus_result"));
        }),
        "at $.type: must be \"proposal_for_consensus\", got \"consensus_result\""
    );
    assert_eq!(
        violation(|m| {
            m.insert("proposal_id".into(), json!("123"));
        }),
        "at $.proposal_id: must be a uuid, got \"123\""
    );
    assert_eq!(
        violation(|m| {
            m.insert("timestamp".into(), json!("yesterday"));
        }),
        "at $.timestamp: must be an RFC 3339 date-time, got \"yesterday\""
    );
    assert_eq!(
        violation(|m| {
            m.insert("instance_id".into(), json!(""));
        }),
        "at $.instance_id: must be at least 1 characters long, is 0"
    );
    assert_eq!(
        violation(|m| {
            m.insert("tags".into(), json!(["a", 2]));
        }),
        "at $.tags[1]: must be of type string, got integer"
    );
    assert_eq!(
        violation(|m| {
            m.insert("tags".into(), json!(["a", "b", "c"]));
        }),
        "at $.tags: must have at most 2 items, has 3"
    );
    assert_eq!(
        violation(|m| {
            m.insert("code_change".into(), json!({"change": "x"}));
        }),
        "at $.code_change.file: is required"
    );
    assert_eq!(
        violation(|m| {
            m.insert("surprise".into(), json!(1));
        }),
        "at $.surprise: is not allowed (additionalProperties is false)"
    );
}

#[test]
fn integers_and_numbers_follow_json_schema() {
    let s = json!({"type": "integer"});
    assert!(validate(&s, &json!(3)).is_ok());
    assert!(
        validate(&s, &json!(3.0)).is_ok(),
        "3.0 is an integer in JSON Schema"
    );
    assert!(validate(&s, &json!(3.5)).is_err());
    assert!(validate(&json!({"type": "number"}), &json!(3)).is_ok());
    assert!(validate(&json!({"enum": [1]}), &json!(1.0)).is_ok());
    assert!(validate(&json!({"type": ["string", "null"]}), &json!(null)).is_ok());
    assert!(validate(&json!(false), &json!(1)).is_err());
}

#[test]
fn schemas_with_unsupported_or_malformed_rules_are_refused() {
    let e = check_schema(&json!({"properties": {"a": {"pattern": "^x"}}})).unwrap_err();
    assert!(
        e.starts_with("at $.properties.a: unsupported keyword \"pattern\""),
        "{e}"
    );
    assert!(check_schema(&json!({"type": "text"})).is_err());
    assert!(check_schema(&json!({"type": []})).is_err());
    assert!(check_schema(&json!({"required": "a"})).is_err());
    assert!(check_schema(&json!({"minLength": -1})).is_err());
    assert!(check_schema(&json!({"maximum": "10"})).is_err());
    assert!(check_schema(&json!({"format": "email"})).is_err());
    assert!(check_schema(&json!({"enum": []})).is_err());
    assert!(check_schema(&json!(3)).is_err());
    assert!(check_schema(&json!({"title": "t", "description": "d", "$schema": "x"})).is_ok());
}

#[test]
fn uuid_and_date_time_formats() {
    assert!(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
    assert!(!is_uuid("123e4567e89b12d3a456426614174000"));
    assert!(!is_uuid("123e4567-e89b-12d3-a456-42661417400g"));
    assert!(is_date_time("2026-11-22T21:00:00Z"));
    assert!(is_date_time("2026-11-22T21:00:00.5+02:00"));
    assert!(!is_date_time("2026-11-22"));
    assert!(!is_date_time("2026-13-22T21:00:00Z"));
}

#[test]
fn parse_refuses_what_it_cannot_hold_with_a_reason() {
    assert_eq!(parse(r#"{"a": [1, 2.5]}"#).unwrap(), json!({"a": [1, 2.5]}));
    let deep = format!(
        "{}1{}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    assert!(parse(&deep).unwrap_err().contains("deeper than 128"));
    let ok = format!(
        "{}1{}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(parse(&ok).is_ok());
    assert!(parse(r#"{"x": 1e400}"#)
        .unwrap_err()
        .contains("range of a double"));
    assert!(parse(r#"{"x": -1e400}"#)
        .unwrap_err()
        .contains("range of a double"));
}
