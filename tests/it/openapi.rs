//! The contract test: openapi.yaml describes exactly what the server serves.
//! `check_response` validates every response the suite receives against the
//! documented status codes, content types and schemas; the tests here prove
//! the served document is the committed file and that every documented
//! operation is routed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{Resp, TestApp};

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).expect("openapi.yaml");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
        let mut value = serde_json::to_value(yaml).expect("openapi.yaml converts to JSON");
        rewrite_nullable(&mut value);
        value
    })
}

/// OpenAPI 3.0's `nullable: true` is not JSON Schema; turn it into a type list.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(values)) = map.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            map.values_mut().for_each(rewrite_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => spec()
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi.yaml: dangling $ref {reference}")),
        None => value,
    }
}

/// The documented path template matching a concrete path.
pub fn match_path(path: &str) -> Option<(&'static str, &'static Value)> {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    spec()["paths"].as_object()?.iter().find_map(|(template, item)| {
        let parts: Vec<&str> = template.split('/').collect();
        let matches = parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s);
        matches.then_some((template.as_str(), item))
    })
}

fn validator(schema: &Value) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(key)
        .or_insert_with(|| {
            let mut root = schema.clone();
            root["components"] = spec()["components"].clone();
            Arc::new(
                jsonschema::draft4::options()
                    .build(&root)
                    .unwrap_or_else(|e| panic!("openapi.yaml schema does not compile: {e}")),
            )
        })
        .clone()
}

/// Panics unless `resp` is a documented response of `method path`.
pub fn check_response(method: &str, path: &str, resp: &Resp) {
    let (template, item) = match_path(path).unwrap_or_else(|| panic!("openapi.yaml documents no path matching {path}"));
    let Some(operation) = item.get(method.to_ascii_lowercase()) else {
        // Unknown methods are answered by the 405 fallback in the error shape.
        assert_eq!(
            resp.status, 405,
            "{method} {template} is not documented but answered {}",
            resp.status
        );
        assert_eq!(resp.body["error"]["code"], "MethodNotAllowed");
        return;
    };
    let status = resp.status.to_string();
    let response = operation["responses"]
        .get(&status)
        .or_else(|| operation["responses"].get("default"))
        .map(resolve)
        .unwrap_or_else(|| {
            panic!(
                "{method} {template}: status {status} is not documented; body: {}",
                resp.text
            )
        });
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            resp.text.is_empty(),
            "{method} {template} {status}: documented without a body but got {}",
            resp.text
        );
        return;
    };
    let (media_type, media) = content
        .iter()
        .find(|(media_type, _)| resp.content_type.starts_with(media_type.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{method} {template} {status}: content type {:?} is not documented",
                resp.content_type
            )
        });
    if media_type != "application/json" {
        return;
    }
    let body: Value = serde_json::from_str(&resp.text)
        .unwrap_or_else(|_| panic!("{method} {template}: body is not JSON: {}", resp.text));
    let validator = validator(&media["schema"]);
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {template} {status}: body does not match openapi.yaml: {errors:?}\nbody: {body}"
    );
}

#[sqlx::test]
async fn served_document_is_the_committed_file(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app.get("/openapi.yaml").await;
    resp.expect(200);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(resp.text, committed);
    assert!(resp.content_type.starts_with("application/yaml"));
}

#[sqlx::test]
async fn every_documented_operation_is_routed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for (template, item) in spec()["paths"].as_object().unwrap() {
        let path = template
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "00000000-0000-0000-0000-000000000000"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let request = app
                .client
                .request(method.to_uppercase().parse().unwrap(), format!("{}{path}", app.base));
            let request = if method == "post" || method == "put" {
                request.json(&json!({}))
            } else {
                request
            };
            // Server-sent event streams stay open; only their headers matter here.
            if template.ends_with("/events") {
                let response = request.send().await.unwrap();
                assert_ne!(response.status().as_u16(), 405, "{method} {template}");
                continue;
            }
            let resp = app.raw(request).await;
            let unrouted = resp.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("no route for");
            assert!(
                !unrouted && resp.status != 405,
                "{method} {template} is documented but not routed: {}",
                resp.text
            );
        }
    }
}
