//! Validates a JSON value against an OpenAPI 3.0 Schema Object as the
//! document says it, with OpenAPI 3.0.3's meaning of its keywords: no
//! translation to JSON Schema, so what this accepts is what the document
//! promises to a client generated from it.
//!
//! `nullable: true` lets `null` through a schema object whatever its other
//! keywords say, except `enum`: a nullable schema with an `enum` that does
//! not list `null` refuses it (OpenAPI 3.0.3, and what generators do). A
//! keyword this module does not know fails the test instead of being
//! skipped, so nothing in the document goes unchecked.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use serde_json::Value;

/// Keywords that only describe.
const ANNOTATIONS: [&str; 7] = [
    "description",
    "example",
    "default",
    "title",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The problems of `instance` against `schema`; `root` is the whole document
/// (for `$ref`).
pub fn errors(root: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(root, schema, instance, "", &mut errors);
    errors
}

/// The schema a `$ref` names.
pub fn resolve<'a>(root: &'a Value, reference: &str) -> &'a Value {
    root.pointer(reference.trim_start_matches('#'))
        .unwrap_or_else(|| panic!("openapi.yaml: dangling $ref {reference}"))
}

fn check(root: &Value, schema: &Value, instance: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        panic!("openapi.yaml: a schema is not an object: {schema}");
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        assert_eq!(
            map.len(),
            1,
            "openapi.yaml: $ref {reference} has siblings, which OpenAPI 3.0 ignores"
        );
        return check(root, resolve(root, reference), instance, at, errors);
    }
    for key in map.keys() {
        let known = ANNOTATIONS.contains(&key.as_str())
            || matches!(
                key.as_str(),
                "type"
                    | "format"
                    | "nullable"
                    | "enum"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
                    | "maxItems"
                    | "minimum"
                    | "maximum"
                    | "minLength"
                    | "maxLength"
                    | "pattern"
                    | "allOf"
                    | "oneOf"
                    | "anyOf"
            );
        assert!(
            known,
            "openapi.yaml: the contract test does not know the schema keyword {key:?}"
        );
    }
    let enum_values = map.get("enum").and_then(Value::as_array);
    if instance.is_null() && map.get("nullable") == Some(&Value::Bool(true)) {
        if enum_values.is_some_and(|values| !values.contains(&Value::Null)) {
            errors.push(format!("{at}: null is not in the enum (nullable does not add it)"));
        }
        return;
    }
    if let Some(kind) = map.get("type").and_then(Value::as_str) {
        if !has_type(instance, kind) {
            errors.push(format!("{at}: {instance} is not of type {kind}"));
            return;
        }
    }
    if let Some(values) = enum_values {
        if !values.contains(instance) {
            errors.push(format!("{at}: {instance} is not one of {values:?}"));
        }
    }
    if let Some(format) = map.get("format").and_then(Value::as_str) {
        check_format(format, instance, at, errors);
    }
    check_bounds(map, instance, at, errors);
    if let Value::Object(object) = instance {
        check_object(root, map, object, at, errors);
    }
    if let Value::Array(items) = instance {
        if let Some(item_schema) = map.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{at}/{i}"), errors);
            }
        }
    }
    check_combinators(root, map, instance, at, errors);
}

fn has_type(instance: &Value, kind: &str) -> bool {
    match kind {
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "string" => instance.is_string(),
        "boolean" => instance.is_boolean(),
        "number" => instance.is_number(),
        "integer" => instance.is_i64() || instance.is_u64(),
        other => panic!("openapi.yaml: unknown type {other:?}"),
    }
}

fn check_format(format: &str, instance: &Value, at: &str, errors: &mut Vec<String>) {
    let fits = match (format, instance) {
        ("int32", Value::Number(n)) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        ("int64", Value::Number(n)) => n.as_i64().is_some(),
        ("date-time", Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        ("uuid", Value::String(s)) => s.len() == 36 && uuid::Uuid::try_parse(s).is_ok(),
        ("int32" | "int64" | "date-time" | "uuid", _) => true,
        (other, _) => panic!("openapi.yaml: the contract test does not know the format {other:?}"),
    };
    if !fits {
        errors.push(format!("{at}: {instance} is not a valid {format}"));
    }
}

fn number(map: &serde_json::Map<String, Value>, key: &str) -> Option<f64> {
    map.get(key).map(|v| {
        v.as_f64()
            .unwrap_or_else(|| panic!("openapi.yaml: {key} is not a number"))
    })
}

fn check_bounds(map: &serde_json::Map<String, Value>, instance: &Value, at: &str, errors: &mut Vec<String>) {
    match instance {
        Value::Number(n) => {
            let n = n.as_f64().unwrap();
            if number(map, "minimum").is_some_and(|min| n < min) || number(map, "maximum").is_some_and(|max| n > max) {
                errors.push(format!("{at}: {n} is out of the documented range"));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as f64;
            if number(map, "minLength").is_some_and(|min| len < min)
                || number(map, "maxLength").is_some_and(|max| len > max)
            {
                errors.push(format!("{at}: {s:?} has a length out of the documented range"));
            }
            if let Some(pattern) = map.get("pattern").and_then(Value::as_str) {
                if !matches_pattern(pattern, s) {
                    errors.push(format!("{at}: {s:?} does not match {pattern}"));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if number(map, "minItems").is_some_and(|min| len < min)
                || number(map, "maxItems").is_some_and(|max| len > max)
            {
                errors.push(format!("{at}: {len} items is out of the documented range"));
            }
        }
        _ => {}
    }
}

/// ECMA-262 patterns, as OpenAPI says, compiled once each.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, regress::Regex>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    let regex = cache.entry(pattern.to_string()).or_insert_with(|| {
        regress::Regex::new(pattern).unwrap_or_else(|e| panic!("openapi.yaml: pattern {pattern} does not compile: {e}"))
    });
    regex.find(text).is_some()
}

fn check_object(
    root: &Value,
    map: &serde_json::Map<String, Value>,
    object: &serde_json::Map<String, Value>,
    at: &str,
    errors: &mut Vec<String>,
) {
    let properties = map.get("properties").and_then(Value::as_object);
    for name in map.get("required").and_then(Value::as_array).into_iter().flatten() {
        let name = name.as_str().unwrap();
        if !object.contains_key(name) {
            errors.push(format!("{at}: the required property {name:?} is missing"));
        }
    }
    for (name, value) in object {
        let here = format!("{at}/{name}");
        match (properties.and_then(|p| p.get(name)), map.get("additionalProperties")) {
            (Some(schema), _) => check(root, schema, value, &here, errors),
            (None, Some(Value::Bool(false))) => errors.push(format!("{here}: this property is not documented")),
            (None, Some(Value::Bool(true)) | None) => {}
            (None, Some(schema)) => check(root, schema, value, &here, errors),
        }
    }
}

fn check_combinators(
    root: &Value,
    map: &serde_json::Map<String, Value>,
    instance: &Value,
    at: &str,
    errors: &mut Vec<String>,
) {
    let branches = |key: &str| -> Vec<Vec<String>> {
        map.get(key)
            .and_then(Value::as_array)
            .map(|schemas| {
                schemas
                    .iter()
                    .map(|schema| {
                        let mut found = Vec::new();
                        check(root, schema, instance, at, &mut found);
                        found
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for found in branches("allOf") {
        errors.extend(found);
    }
    let one_of = branches("oneOf");
    if !one_of.is_empty() {
        let matching = one_of.iter().filter(|found| found.is_empty()).count();
        if matching != 1 {
            errors.push(format!(
                "{at}: {instance} matches {matching} of the oneOf schemas, not exactly one: {one_of:?}"
            ));
        }
    }
    let any_of = branches("anyOf");
    if !any_of.is_empty() && any_of.iter().all(|found| !found.is_empty()) {
        errors.push(format!(
            "{at}: {instance} matches none of the anyOf schemas: {any_of:?}"
        ));
    }
}

#[test]
fn nullable_and_enum_as_openapi_3_0_says() {
    let root = serde_json::json!({"components": {"schemas": {
        "Kind": {"type": "string", "enum": ["a", "b"]},
    }}});
    let inline = serde_json::json!({"type": "string", "enum": ["a"], "nullable": true});
    assert!(
        !errors(&root, &inline, &Value::Null).is_empty(),
        "an enum without null refuses null"
    );
    let at_use_site = serde_json::json!({"allOf": [{"$ref": "#/components/schemas/Kind"}], "nullable": true});
    assert!(errors(&root, &at_use_site, &Value::Null).is_empty());
    assert!(errors(&root, &at_use_site, &serde_json::json!("b")).is_empty());
    assert!(!errors(&root, &at_use_site, &serde_json::json!("c")).is_empty());
    let not_nullable = serde_json::json!({"$ref": "#/components/schemas/Kind"});
    assert!(!errors(&root, &not_nullable, &Value::Null).is_empty());
    let string = serde_json::json!({"type": "string", "nullable": true, "format": "date-time"});
    assert!(errors(&root, &string, &Value::Null).is_empty());
    assert!(!errors(&root, &string, &serde_json::json!("yesterday")).is_empty());
    let int32 = serde_json::json!({"type": "integer", "format": "int32"});
    assert!(!errors(&root, &int32, &serde_json::json!(2_147_483_648_i64)).is_empty());
    assert!(!errors(&root, &int32, &serde_json::json!(1.5)).is_empty());
}
