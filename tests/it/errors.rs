//! Malformed requests of every kind get a 4xx in the one error shape.

use serde_json::json;
use sqlx::PgPool;

use crate::{helpers::TestApp, pipelines::pass_definition};

#[sqlx::test]
async fn unknown_route_and_wrong_method(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app.raw(app.client.get(format!("{}/v2/nothing", app.base))).await;
    let message = resp.expect_error(404, "NotFound");
    assert!(message.contains("/v2/nothing"), "{message}");
    let resp = app.raw(app.client.patch(format!("{}/v1/pipelines", app.base))).await;
    let message = resp.expect_error(405, "MethodNotAllowed");
    assert!(message.contains("PATCH"), "{message}");
}

#[sqlx::test]
async fn malformed_json_bodies(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let url = format!("{}/v1/pipelines", app.base);
    let post = |body: Vec<u8>| {
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        b"{".to_vec(),
        b"not json".to_vec(),
        b"{\"name\": \"a\"} trailing".to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        "[".repeat(10_000).into_bytes(),
        b"[]".to_vec(),
    ] {
        let resp = app.raw(post(body)).await;
        let message = resp.expect_error(400, "ValidationError");
        assert!(!message.is_empty());
    }
    // The server is still healthy.
    app.get("/healthz").await.expect(200);
}

#[sqlx::test]
async fn wrong_content_type(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body = json!({"name": "x", "definition": pass_definition()}).to_string();
    let resp = app
        .raw(
            app.client
                .post(format!("{}/v1/pipelines", app.base))
                .header("content-type", "text/xml")
                .body(body),
        )
        .await;
    let message = resp.expect_error(415, "UnsupportedMediaType");
    assert!(message.contains("text/xml"), "{message}");
}

#[sqlx::test]
async fn oversized_body_is_413(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.api.max_body_bytes = 1024).await;
    let big = json!({"name": "big", "definition": pass_definition(), "description": "x".repeat(4096)});
    let resp = app.post("/v1/pipelines", &big).await;
    resp.expect_error(413, "PayloadTooLarge");
    app.post(
        "/v1/pipelines",
        &json!({"name": "small", "definition": pass_definition()}),
    )
    .await
    .expect(201);
}

#[sqlx::test]
async fn health_and_readiness(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.get("/healthz").await.expect(200);
    app.get("/readyz").await.expect(200);
}

#[sqlx::test]
async fn shuts_down_gracefully(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.get("/healthz").await.expect(200);
    app.stop().await;
}

/// Text that belongs to Rust or serde, not to a message for a person.
const INTERNAL_MARKERS: [&str; 9] = [
    "untagged",
    "enum",
    "struct",
    "line 1 column",
    "Some(",
    "None",
    "{\"",
    "\\\"",
    "variant",
];

/// Every message of an error answer (the top one and each detail).
fn messages(resp: &crate::helpers::Resp) -> Vec<String> {
    let mut out = vec![resp.body["error"]["message"].as_str().unwrap_or_default().to_string()];
    for detail in resp.body["error"]["details"].as_array().into_iter().flatten() {
        out.push(detail["message"].as_str().unwrap_or_default().to_string());
    }
    out
}

/// Issue 11 item 6: the error corpus. Bad selective bodies, bad parameters,
/// bad definitions and bad query strings are all 4xx whose messages say what
/// is wrong in JSON terms: no serde or Rust type text.
#[sqlx::test]
async fn no_error_message_shows_serde_or_rust_text(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = crate::helpers::definition_with(
        json!([
            {"Name": "Rate", "Type": "Integer", "DefaultValue": 1},
            {"Name": "Mode", "Type": "String", "DefaultValue": "a", "EnumValues": ["a", "b"]}
        ]),
        json!([
            {"Name": "A", "Type": "Pass", "Arguments": {}},
            {"Name": "B", "Type": "Pass", "DependsOn": ["A"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("p", definition.clone()).await;
    let ran = app.start("p", json!({})).await;
    app.wait_terminal(&ran).await;

    let start_bodies = [
        json!({"selective_execution": {"selected_steps": 5}}),
        json!({"selective_execution": {"selected_steps": {"A": 1}}}),
        json!({"selective_execution": {"selected_steps": "everything"}}),
        json!({"selective_execution": {"selected_steps": [1, 2]}}),
        json!({"selective_execution": {"selected_steps": ["X", "Y"]}}),
        json!({"selective_execution": {"selected_steps": ["B"], "inherit_parameters": "yes"}}),
        json!({"selective_execution": {"selected_steps": ["B"], "source_execution": 5}}),
        json!({"selective_execution": {"selected_steps": ["B"], "source_execution": "garbage"}}),
        json!({"selective_execution": {"selected_steps": ["B"], "source_execution": "arn:stepwise:pipelines:local:000000000000:pipeline/q/execution/0192f6c0-0000-7000-8000-000000000000"}}),
        json!({"selective_execution": {"selected_steps": ["B"], "bogus": 1}}),
        json!({"selective_execution": []}),
        json!({"selective_execution": "B"}),
        json!({"selective_execution": {}}),
        json!({"parameters": []}),
        json!({"parameters": "x"}),
        json!({"parameters": {"Rate": "abc"}}),
        json!({"parameters": {"Rate": 1.5}}),
        json!({"parameters": {"Rate": {"a": 1}}}),
        json!({"parameters": {"Mode": "c"}}),
        json!({"parameters": {"Nope": 1}}),
        json!({"cache_mode": "bogus"}),
        json!({"cache_mode": 5}),
        json!({"max_parallel_steps": "x"}),
        json!({"max_parallel_steps": 1.5}),
        json!({"max_parallel_steps": -1}),
        json!({"pipeline_version": "x"}),
        json!({"pipeline_version": 99999999999i64}),
        json!({"pipeline_version": 0}),
        json!({"client_request_token": 5}),
        json!({"display_name": ["x"]}),
        json!({"unknown": true}),
        json!([]),
        json!("x"),
        json!(5),
    ];
    let mut checked = 0;
    for body in &start_bodies {
        for path in ["/v1/pipelines/p/executions", "/v1/pipelines/p/executions/plan"] {
            let resp = app.post(path, body).await;
            assert!(
                (400..500).contains(&resp.status) || resp.status == 200,
                "{path} {body}: {} {}",
                resp.status,
                resp.text
            );
            // A plan answers 200 with the start's errors in `errors`.
            let mut texts = messages(&resp);
            for error in resp.body["errors"].as_array().into_iter().flatten() {
                texts.push(error["message"].as_str().unwrap_or_default().to_string());
            }
            for text in texts {
                for marker in INTERNAL_MARKERS {
                    assert!(!text.contains(marker), "{path} {body}: {marker:?} in {text:?}");
                }
                checked += 1;
            }
        }
    }

    let pipeline_bodies = [
        json!({"name": 5, "definition": pass_definition()}),
        json!({"name": "q", "definition": 5}),
        json!({"name": "q", "definition": "not json"}),
        json!({"name": "q", "definition": "{\"Version\": "}),
        json!({"name": "q", "definition": {"Version": "2020-12-01", "Steps": {}}}),
        json!({"name": "q", "definition": {"Version": "2020-12-01", "Steps": [5]}}),
        json!({"name": "q", "definition": {"Version": "2020-12-01", "Steps": [{"Name": 5, "Type": "Pass"}]}}),
        json!({"name": "q", "definition": {"Version": "2020-12-01", "Parameters": [{"Name": "R", "Type": "Integer", "DefaultValue": "x"}], "Steps": []}}),
        json!({"name": "q", "definition": pass_definition(), "max_parallel_steps": "x"}),
        json!({"name": "q", "definition": pass_definition(), "description": {"a": 1}}),
        json!({"name": ["q"]}),
        json!([]),
    ];
    for body in &pipeline_bodies {
        let resp = app.post("/v1/pipelines", body).await;
        assert!(
            (400..500).contains(&resp.status),
            "{body}: {} {}",
            resp.status,
            resp.text
        );
        for text in messages(&resp) {
            for marker in INTERNAL_MARKERS {
                assert!(!text.contains(marker), "{body}: {marker:?} in {text:?}");
            }
            checked += 1;
        }
    }

    let raw_bodies: [&[u8]; 4] = [
        b"{\"parameters\": {",
        b"{\"parameters\": 1} x",
        b"{\"a\" 1}",
        b"\"\\u12\"",
    ];
    for body in raw_bodies {
        let request = app
            .client
            .post(format!("{}/v1/pipelines/p/executions", app.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        let resp = app.raw(request).await;
        resp.expect_error(400, "ValidationError");
        for text in messages(&resp) {
            for marker in INTERNAL_MARKERS {
                assert!(!text.contains(marker), "{body:?}: {marker:?} in {text:?}");
            }
        }
    }

    let queries = [
        "/v1/pipelines?limit=abc".to_string(),
        "/v1/pipelines?limit=-1".to_string(),
        "/v1/pipelines?limit=1.5".to_string(),
        "/v1/pipelines?limit=99999999999".to_string(),
        "/v1/pipelines?next_token=garbage".to_string(),
        "/v1/pipelines?bogus=1".to_string(),
        "/v1/pipelines/p/executions?status=Bogus".to_string(),
        "/v1/pipelines/p/executions?limit=x".to_string(),
        "/v1/pipelines/p/versions?limit=0".to_string(),
        format!("/v1/executions/{ran}?wait_seconds=abc"),
        format!("/v1/executions/{ran}?wait_seconds=-5"),
        format!("/v1/executions/{ran}/steps/A/logs?attempt=x"),
        format!("/v1/executions/{ran}/steps/A/logs?attempt=99999999999"),
        "/v1/executions/garbage".to_string(),
    ];
    for path in &queries {
        let resp = app.get(path).await;
        assert!(
            (400..500).contains(&resp.status),
            "{path}: {} {}",
            resp.status,
            resp.text
        );
        for text in messages(&resp) {
            for marker in INTERNAL_MARKERS {
                assert!(!text.contains(marker), "{path}: {marker:?} in {text:?}");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} messages checked");
}

/// Issue 20 item 6: a request of the wrong shape is told what was expected in
/// the request's own terms (the field, the accepted values, what came).
#[sqlx::test]
async fn messages_say_what_was_expected_in_the_requests_terms(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("p", pass_definition()).await;
    let cases = [
        (
            json!({"cache_mode": 3}),
            "/cache_mode",
            "cache_mode: expected one of \"use\", \"refresh\", \"off\", got the number 3",
        ),
        (
            json!({"cache_mode": "bypass"}),
            "/cache_mode",
            "cache_mode: expected one of \"use\", \"refresh\", \"off\", got \"bypass\"",
        ),
        (json!([]), "", "the request body must be a JSON object, got an array"),
        (json!(5), "", "the request body must be a JSON object, got the number 5"),
        (
            json!({"selective_execution": []}),
            "/selective_execution",
            "selective_execution: expected a JSON object, got an array",
        ),
        (
            json!({"max_parallel_steps": "x"}),
            "/max_parallel_steps",
            "max_parallel_steps: expected an integer, got \"x\"",
        ),
        (
            json!({"parameters": [1]}),
            "/parameters",
            "parameters: expected a JSON object, got an array",
        ),
    ];
    for (body, path, expected) in cases {
        for url in ["/v1/pipelines/p/executions", "/v1/pipelines/p/executions/plan"] {
            let resp = app.post(url, &body).await;
            let message = resp.expect_error(400, "ValidationError");
            assert_eq!(message, expected, "{url} {body}");
            assert_eq!(resp.detail_paths(), vec![path.to_string()], "{url} {body}");
        }
    }
    let resp = app
        .post("/v1/pipelines", &json!({"name": 5, "definition": pass_definition()}))
        .await;
    assert_eq!(
        resp.expect_error(400, "ValidationError"),
        "name: expected a string, got the number 5"
    );

    for (query, got) in [("abc", "\"abc\""), ("-1", "-1"), ("0", "0"), ("1.5", "\"1.5\"")] {
        let resp = app.get(&format!("/v1/pipelines?limit={query}")).await;
        assert_eq!(
            resp.expect_error(400, "ValidationError"),
            format!("limit: expected a whole number from 1 to 1000, got {got}"),
        );
        assert_eq!(resp.detail_paths(), vec!["?limit".to_string()]);
    }
    let resp = app.get("/v1/executions/garbage?wait_seconds=soon").await;
    assert_eq!(
        resp.expect_error(400, "ValidationError"),
        "wait_seconds: expected a whole number of seconds, got \"soon\""
    );
    app.stop().await;
}
