//! The contract test: openapi.yaml describes exactly what the server serves.
//! `check_response` validates every response the suite receives against the
//! documented status codes, content types and schemas; the tests here prove
//! the served document is the committed file and that every documented
//! operation is routed.

use std::sync::OnceLock;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    helpers::{Resp, TestApp},
    oas30,
};

/// The committed document, as written: the contract is checked against
/// exactly what clients are generated from.
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).expect("openapi.yaml");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
        serde_json::to_value(yaml).expect("openapi.yaml converts to JSON")
    })
}

fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => oas30::resolve(spec(), reference),
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
    // An exact status, else its range ("5XX"); the document has no `default`.
    let range = format!("{}XX", &status[..1]);
    let response = operation["responses"]
        .get(&status)
        .or_else(|| operation["responses"].get(&range))
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
    let errors = oas30::errors(spec(), &media["schema"], &body);
    assert!(
        errors.is_empty(),
        "{method} {template} {status}: body does not match openapi.yaml: {errors:?}\nbody: {body}"
    );
}

/// Panics unless `value` is a valid `#/components/schemas/{name}`: for what
/// no response body carries (the data of server-sent events).
pub fn check_component(name: &str, value: &Value) {
    let schema = json!({"$ref": format!("#/components/schemas/{name}")});
    let errors = oas30::errors(spec(), &schema, value);
    assert!(
        errors.is_empty(),
        "{name} does not match openapi.yaml: {errors:?}\n{value}"
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

/// The methods and paths the router serves (its route table, recorded as
/// the router is built: `stepwise::api::routes`) and the operations
/// openapi.yaml documents are the same set, both ways. The web UI's pages
/// (`/ui...`) answer HTML and are not part of the REST contract.
#[test]
fn routed_operations_are_the_documented_ones() {
    let routed: std::collections::BTreeSet<(String, String)> = stepwise::api::routes()
        .table()
        .iter()
        .filter(|(_, path)| *path != "/ui" && !path.starts_with("/ui/"))
        .map(|(method, path)| (method.as_str().to_ascii_lowercase(), path.to_string()))
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = spec()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
                .into_iter()
                .filter(|method| item.get(*method).is_some())
                .map(|method| (method.to_string(), path.clone()))
        })
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not routed: {unrouted:?}"
    );
}

/// The route table is what the running server answers: every method and
/// path in it reaches a handler (not the "no route" or 405 fallback).
#[sqlx::test]
async fn every_route_in_the_table_is_served(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for (method, template) in stepwise::api::routes().table() {
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
        let request = app.client.request(method.clone(), format!("{}{path}", app.base));
        let request = if method == "POST" || method == "PUT" {
            request.json(&json!({}))
        } else {
            request
        };
        // Event streams stay open; the status line is what matters here.
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), request.send())
            .await
            .unwrap_or_else(|_| panic!("{method} {template} answered nothing"))
            .unwrap();
        let status = response.status().as_u16();
        let body = if template.ends_with("/events") && status == 200 {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        assert!(
            status != 405 && !body.contains("no route for"),
            "{method} {template} is in the route table but not served: {status} {body}"
        );
    }
}

/// Every schema object reachable from `schema` (itself included), with where
/// it is and whether it is a component's own top level.
fn schema_objects<'a>(schema: &'a Value, at: String, top: bool, out: &mut Vec<(String, &'a Value, bool)>) {
    out.push((at.clone(), schema, top));
    let Some(map) = schema.as_object() else { return };
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            schema_objects(property, format!("{at}/properties/{name}"), false, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = map.get(key).filter(|v| v.is_object()) {
            schema_objects(inner, format!("{at}/{key}"), false, out);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for (i, inner) in map.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            schema_objects(inner, format!("{at}/{key}/{i}"), false, out);
        }
    }
}

/// What generators need of the document (issue 12): every object schema
/// named, nullability at the use site only, null allowed wherever an enum is
/// nullable, and the error shape on every error of every operation.
#[test]
fn document_is_what_client_generators_need() {
    let spec = spec();
    let mut schemas = Vec::new();
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        schema_objects(schema, format!("#/components/schemas/{name}"), true, &mut schemas);
    }
    let mut media_schemas = Vec::new();
    let mut operations = Vec::new();
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            operations.push((format!("{method} {template}"), operation));
        }
    }
    for (name, parameter) in spec["components"]["parameters"].as_object().unwrap() {
        media_schemas.push((format!("#/components/parameters/{name}"), &parameter["schema"]));
    }
    let mut problems = Vec::new();
    for (name, operation) in &operations {
        if operation.get("operationId").is_none() {
            problems.push(format!("{name}: no operationId"));
        }
        let responses = operation["responses"].as_object().unwrap();
        if responses.contains_key("default") {
            problems.push(format!(
                "{name}: a `default` response (progenitor reads it as success and error)"
            ));
        }
        if !responses.contains_key("5XX") {
            problems.push(format!("{name}: no 5XX response"));
        }
        for (status, response) in responses {
            let response = resolve(response);
            let error = !status.starts_with('2');
            let schema = &response["content"]["application/json"]["schema"];
            if error && schema["$ref"] != "#/components/schemas/ErrorResponse" {
                problems.push(format!("{name} {status}: not the ErrorResponse schema"));
            }
            for (media_type, media) in response.get("content").and_then(Value::as_object).into_iter().flatten() {
                media_schemas.push((format!("{name} {status} {media_type}"), &media["schema"]));
            }
        }
        for (media_type, media) in operation["requestBody"]["content"].as_object().into_iter().flatten() {
            media_schemas.push((format!("{name} request {media_type}"), &media["schema"]));
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            media_schemas.push((format!("{name} parameter"), &resolve(parameter)["schema"]));
        }
    }
    for (at, schema) in media_schemas {
        schema_objects(schema, at, false, &mut schemas);
    }
    problems.extend(examples_that_do_not_fit(spec));
    for (at, schema, top) in schemas {
        let Some(map) = schema.as_object() else { continue };
        let nullable = map.get("nullable") == Some(&Value::Bool(true));
        if top && map.contains_key("nullable") {
            problems.push(format!(
                "{at}: a component schema marked nullable (say it where it is used)"
            ));
        }
        if nullable && map.contains_key("enum") {
            problems.push(format!(
                "{at}: a nullable enum (use allOf: [$ref to a named enum] with nullable)"
            ));
        }
        if map.contains_key("$ref") && map.len() > 1 {
            problems.push(format!("{at}: $ref with siblings"));
        }
        if !top && map.get("type") == Some(&json!("object")) && map.contains_key("properties") {
            problems.push(format!("{at}: an inline object schema (name it in components)"));
        }
        if !top && map.contains_key("enum") {
            problems.push(format!("{at}: an inline enum (name it in components)"));
        }
        if !top
            && map.get("type") == Some(&json!("object"))
            && map.get("additionalProperties").is_some_and(Value::is_object)
        {
            problems.push(format!("{at}: an inline map schema (name it in components)"));
        }
        if let Some(all_of) = map.get("allOf").and_then(Value::as_array) {
            if nullable && (all_of.len() != 1 || all_of[0].get("$ref").is_none()) {
                problems.push(format!("{at}: a nullable allOf that is not one $ref"));
            }
        }
    }
    assert!(problems.is_empty(), "openapi.yaml:\n{}", problems.join("\n"));
}

/// Every example of the document that its schema refuses: request and
/// response examples and component schemas' own.
fn examples_that_do_not_fit(spec: &Value) -> Vec<String> {
    let mut examples: Vec<(String, &Value, &Value)> = Vec::new();
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        if let Some(example) = schema.get("example") {
            examples.push((format!("#/components/schemas/{name}"), schema, example));
        }
    }
    let mut media: Vec<(String, &Value)> = Vec::new();
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (content_type, m) in operation["requestBody"]["content"].as_object().into_iter().flatten() {
                media.push((format!("{method} {template} request {content_type}"), m));
            }
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                for (content_type, m) in resolve(response)["content"].as_object().into_iter().flatten() {
                    media.push((format!("{method} {template} {status} {content_type}"), m));
                }
            }
        }
    }
    for (at, m) in media {
        if let Some(example) = m.get("example") {
            examples.push((at.clone(), &m["schema"], example));
        }
        for (name, example) in m["examples"].as_object().into_iter().flatten() {
            examples.push((format!("{at} example {name}"), &m["schema"], &example["value"]));
        }
    }
    assert!(examples.len() >= 8, "the main operations have examples");
    examples
        .into_iter()
        .flat_map(|(at, schema, example)| {
            oas30::errors(spec, schema, example)
                .into_iter()
                .map(move |e| format!("{at}: the example does not fit: {e}"))
        })
        .collect()
}
