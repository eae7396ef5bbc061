//! Message contracts: the subset of JSON Schema that `send` checks payloads against.
//!
//! Supported keywords (anything else is refused when the contract is registered, so a rule is
//! never silently ignored):
//! - `type`: `"object"`, `"array"`, `"string"`, `"number"`, `"integer"` (a number without a
//!   fraction), `"boolean"`, `"null"`, or an array of these;
//! - objects: `properties`, `required`, `additionalProperties` (false, true or a schema);
//! - arrays: `items` (one schema for every element), `minItems`, `maxItems`;
//! - strings: `minLength`, `maxLength` (in characters), `format` `"date-time"` (RFC 3339) or
//!   `"uuid"` (8-4-4-4-12 hex);
//! - numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers);
//! - any value: `enum`, `const`;
//! - annotations, accepted and not checked: `$schema`, `$id`, `title`, `description`,
//!   `examples`, `default`, `$comment`.
//!
//! A violation names the failing field as a path (`$.code_change.file`, `$.items[2]`) and the
//! rule it broke.
use std::fmt;

use serde_json::Value;

const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "examples",
    "default",
    "$comment",
];
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "const",
];
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// A payload that breaks its contract: where, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.path, self.rule)
    }
}

fn bad(path: &str, msg: impl Into<String>) -> String {
    format!("at {path}: {}", msg.into())
}

fn non_negative_int(v: &Value) -> bool {
    v.as_u64().is_some()
}

/// How deep JSON may nest to be checked: serde_json's parser stops at 128 levels.
pub const MAX_DEPTH: usize = 128;

/// JSON text as a value, or why it cannot be one here: nested deeper than `MAX_DEPTH`, or a
/// number outside a double's range (both valid jsonb).
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| {
        let e = e.to_string();
        if e.starts_with("recursion limit exceeded") {
            format!("it nests deeper than {MAX_DEPTH} levels")
        } else if e.starts_with("number out of range") {
            "it has a number outside the range of a double (about 1.8e308)".to_owned()
        } else {
            format!("it is not JSON a contract can read ({e})")
        }
    })
}

/// Checks that `schema` uses only the supported subset, correctly; the error names where.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "$")
}

fn check_at(schema: &Value, path: &str) -> Result<(), String> {
    let obj = match schema {
        Value::Object(o) => o,
        Value::Bool(_) => return Ok(()), // true accepts anything, false nothing
        _ => return Err(bad(path, "a schema must be an object or a boolean")),
    };
    for (k, v) in obj {
        if ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        if !KEYWORDS.contains(&k.as_str()) {
            return Err(bad(
                path,
                format!(
                    "unsupported keyword \"{k}\" (supported: {})",
                    KEYWORDS.join(", ")
                ),
            ));
        }
        match k.as_str() {
            "type" => {
                let ok = match v {
                    Value::String(t) => TYPES.contains(&t.as_str()),
                    Value::Array(ts) => {
                        !ts.is_empty()
                            && ts
                                .iter()
                                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
                    }
                    _ => false,
                };
                if !ok {
                    return Err(bad(
                        path,
                        format!(
                            "\"type\" must be one of {} or an array of them",
                            TYPES.join(", ")
                        ),
                    ));
                }
            }
            "properties" => {
                let Value::Object(props) = v else {
                    return Err(bad(path, "\"properties\" must be an object"));
                };
                for (name, sub) in props {
                    check_at(sub, &format!("{path}.properties.{name}"))?;
                }
            }
            "required" if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) => {
                return Err(bad(path, "\"required\" must be an array of strings"));
            }
            "additionalProperties" => check_at(v, &format!("{path}.additionalProperties"))?,
            "items" => check_at(v, &format!("{path}.items"))?,
            "minItems" | "maxItems" | "minLength" | "maxLength" if !non_negative_int(v) => {
                return Err(bad(path, format!("\"{k}\" must be a non-negative integer")));
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" if !v.is_number() => {
                return Err(bad(path, format!("\"{k}\" must be a number")));
            }
            "format" if !matches!(v.as_str(), Some("date-time") | Some("uuid")) => {
                return Err(bad(path, "\"format\" must be \"date-time\" or \"uuid\""));
            }
            "enum" if v.as_array().is_none_or(|a| a.is_empty()) => {
                return Err(bad(path, "\"enum\" must be a non-empty array"));
            }
            _ => {} // const: any value
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn has_type(v: &Value, t: &str) -> bool {
    match (t, v) {
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => is_integer(n),
        _ => type_name(v) == t || (t == "number" && type_name(v) == "integer"),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_date_time(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Equality as JSON Schema means it (1 and 1.0 are equal).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// Validates `value` against a schema that passed `check_schema`; the first violation found.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Violation> {
    validate_at(schema, value, "$")
}

fn fail(path: &str, rule: String) -> Result<(), Violation> {
    Err(Violation {
        path: path.to_owned(),
        rule,
    })
}

fn validate_at(schema: &Value, value: &Value, path: &str) -> Result<(), Violation> {
    let obj = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return fail(path, "no value is allowed here".into()),
        Value::Object(o) => o,
        _ => return Ok(()), // check_schema refuses these
    };
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return fail(
                path,
                format!(
                    "must be of type {}, got {}",
                    types.join(" or "),
                    type_name(value)
                ),
            );
        }
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array) {
        if !e.iter().any(|c| json_eq(c, value)) {
            let allowed: Vec<String> = e.iter().map(short).collect();
            return fail(
                path,
                format!(
                    "must be one of {}, got {}",
                    allowed.join(", "),
                    short(value)
                ),
            );
        }
    }
    if let Some(c) = obj.get("const") {
        if !json_eq(c, value) {
            return fail(path, format!("must be {}, got {}", short(c), short(value)));
        }
    }
    match value {
        Value::Object(fields) => {
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                for name in req.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return fail(&format!("{path}.{name}"), "is required".into());
                    }
                }
            }
            let props = obj.get("properties").and_then(Value::as_object);
            for (name, v) in fields {
                let sub = format!("{path}.{name}");
                match props.and_then(|p| p.get(name)) {
                    Some(s) => validate_at(s, v, &sub)?,
                    None => match obj.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return fail(
                                &sub,
                                "is not allowed (additionalProperties is false)".into(),
                            )
                        }
                        Some(s) => validate_at(s, v, &sub)?,
                        None => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(n) = obj.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < n {
                    return fail(
                        path,
                        format!("must have at least {n} items, has {}", items.len()),
                    );
                }
            }
            if let Some(n) = obj.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > n {
                    return fail(
                        path,
                        format!("must have at most {n} items, has {}", items.len()),
                    );
                }
            }
            if let Some(s) = obj.get("items") {
                for (i, v) in items.iter().enumerate() {
                    validate_at(s, v, &format!("{path}[{i}]"))?;
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(n) = obj.get("minLength").and_then(Value::as_u64) {
                if len < n {
                    return fail(
                        path,
                        format!("must be at least {n} characters long, is {len}"),
                    );
                }
            }
            if let Some(n) = obj.get("maxLength").and_then(Value::as_u64) {
                if len > n {
                    return fail(
                        path,
                        format!("must be at most {n} characters long, is {len}"),
                    );
                }
            }
            match obj.get("format").and_then(Value::as_str) {
                Some("uuid") if !is_uuid(s) => {
                    return fail(path, format!("must be a uuid, got {}", short(value)))
                }
                Some("date-time") if !is_date_time(s) => {
                    return fail(
                        path,
                        format!("must be an RFC 3339 date-time, got {}", short(value)),
                    )
                }
                _ => {}
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| obj.get(k).and_then(Value::as_f64);
            if let Some(m) = bound("minimum") {
                if x < m {
                    return fail(path, format!("must be at least {m}, got {n}"));
                }
            }
            if let Some(m) = bound("maximum") {
                if x > m {
                    return fail(path, format!("must be at most {m}, got {n}"));
                }
            }
            if let Some(m) = bound("exclusiveMinimum") {
                if x <= m {
                    return fail(path, format!("must be greater than {m}, got {n}"));
                }
            }
            if let Some(m) = bound("exclusiveMaximum") {
                if x >= m {
                    return fail(path, format!("must be less than {m}, got {n}"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
