//! Hardening: hostile inputs on every route get a 4xx in the one error
//! shape; huge definitions work; several worker processes on one database run
//! every step exactly once; a worker process killed with SIGKILL mid-step
//! loses nothing that was committed.

use std::{path::Path, time::Duration};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{
    helpers::{count_run, definition_with, runs_of, wait_until, Resp, TestApp, TEST_TOKEN},
    openapi::check_response,
    pipelines::pass_definition,
    procs::{database_url, StepwiseProcess},
};

/// Asserts a 4xx in the one error shape `{"error":{"code","message","details"}}`
/// and that the response is documented in openapi.yaml.
#[track_caller]
fn assert_error_shape(method: &str, path: &str, resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "{method} {path}: body {}", resp.text);
    assert!(
        resp.content_type.starts_with("application/json"),
        "{method} {path}: content type {:?}",
        resp.content_type
    );
    let error = &resp.body["error"];
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{method} {path}: {}",
        resp.text
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{method} {path}: {}",
        resp.text
    );
    assert!(error["details"].is_array(), "{method} {path}: {}", resp.text);
    assert_eq!(resp.body.as_object().unwrap().len(), 1, "{}", resp.text);
    check_response(method, path, resp);
}

/// Sends `body` as `content_type` and checks the answer is documented.
async fn send_bytes(app: &TestApp, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.base))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    app.raw(request).await
}

/// One raw HTTP/1.1 exchange over TCP, for requests reqwest will not send
/// (a lying Content-Length, a chunked body). Returns the status and body.
async fn raw_http(app: &TestApp, head: String, body: &[u8]) -> (u16, Value) {
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    // A complete JSON body (connection: close) ends with '}'.
                    if response.ends_with(b"}") || response.ends_with(b"}\n") {
                        break;
                    }
                }
            }
        }
    })
    .await
    .expect("the server answers a raw request");
    let text = String::from_utf8_lossy(&response).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The body may itself be chunked; take the JSON object inside.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

#[sqlx::test]
async fn oversized_bodies_on_every_body_route_are_413(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.api.max_body_bytes = 4096).await;
    app.create_pipeline("p", pass_definition()).await;
    let big =
        json!({"name": "big", "definition": pass_definition(), "parameters": {}, "description": "x".repeat(8192)});
    for (method, path) in [
        (Method::POST, "/v1/pipelines"),
        (Method::PUT, "/v1/pipelines/p"),
        (Method::POST, "/v1/pipelines/p/executions"),
        (Method::POST, "/v1/pipelines/p/executions/plan"),
        (Method::POST, "/v1/callbacks/some-token/success"),
        (Method::POST, "/v1/callbacks/some-token/failure"),
    ] {
        let resp = send_bytes(
            &app,
            method.clone(),
            path,
            Some("application/json"),
            big.to_string().into_bytes(),
        )
        .await;
        assert_error_shape(method.as_str(), path, &resp, 413);
        assert_eq!(resp.body["error"]["code"], "PayloadTooLarge");
    }

    // A Content-Length far over the limit: refused once the limit is passed,
    // without waiting for the rest.
    let head = format!("POST /v1/pipelines HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TEST_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\nconnection: close\r\n\r\n");
    let (status, body) = raw_http(&app, head, "x".repeat(8192).as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "PayloadTooLarge", "{body}");

    // A chunked body (no Content-Length) that grows past the limit.
    let chunk = "x".repeat(1024);
    let mut chunked = String::from("{\"name\":\"chunked\",\"description\":\"");
    chunked.push_str(&chunk.repeat(8));
    chunked.push_str("\"}");
    let mut encoded = Vec::new();
    for piece in chunked.as_bytes().chunks(1000) {
        encoded.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    let head = format!("POST /v1/pipelines HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TEST_TOKEN}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    let (status, body) = raw_http(&app, head, &encoded).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "PayloadTooLarge", "{body}");

    app.get("/healthz").await.expect(200);
    // Nothing was created by the refused requests.
    let list = app.get("/v1/pipelines").await;
    assert_eq!(list.expect(200)["pipelines"].as_array().unwrap().len(), 1);
}

/// `depth` levels of `{"a": ... }` around `inner`.
fn nested_object(depth: usize, inner: &str) -> String {
    let mut s = String::with_capacity(depth * 8 + inner.len());
    for _ in 0..depth {
        s.push_str("{\"a\":");
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push('}');
    }
    s
}

#[sqlx::test]
async fn deeply_nested_json_is_a_400_everywhere(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("p", pass_definition()).await;
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = nested_object(10_000, "1");
    let bodies = [
        // Well-formed JSON, 10,000 levels deep, in various places.
        format!("{{\"name\":\"deep\",\"definition\":{deep_array}}}"),
        format!("{{\"name\":\"deep\",\"definition\":{deep_object}}}"),
        format!(
            "{{\"name\":\"deep\",\"definition\":{{\"Version\":\"2020-12-01\",\"Steps\":[{{\"Name\":\"A\",\"Type\":\"Pass\",\"Arguments\":{deep_object}}}]}}}}"
        ),
        // The definition as a JSON string holding deep JSON.
        serde_json::to_string(&json!({"name": "deep", "definition": deep_object})).unwrap(),
        deep_object.clone(),
    ];
    for body in &bodies {
        let resp = send_bytes(
            &app,
            Method::POST,
            "/v1/pipelines",
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
        assert_error_shape("POST", "/v1/pipelines", &resp, 400);
    }
    for (method, path, body) in [
        (
            Method::PUT,
            "/v1/pipelines/p",
            format!("{{\"definition\":{deep_object}}}"),
        ),
        (
            Method::POST,
            "/v1/pipelines/p/executions",
            format!("{{\"parameters\":{{\"X\":{deep_object}}}}}"),
        ),
        (Method::POST, "/v1/pipelines/p/executions", deep_array.clone()),
        (
            Method::POST,
            "/v1/pipelines/p/executions/plan",
            format!("{{\"selective_execution\":{deep_object}}}"),
        ),
        (
            Method::POST,
            "/v1/callbacks/some-token/success",
            format!("{{\"output_parameters\":{deep_object}}}"),
        ),
        (Method::POST, "/v1/callbacks/some-token/failure", deep_array.clone()),
    ] {
        let resp = send_bytes(&app, method.clone(), path, Some("application/json"), body.into_bytes()).await;
        assert!(
            resp.status == 400 || (path.starts_with("/v1/callbacks") && resp.status == 404),
            "{method} {path}: {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(method.as_str(), path, &resp, resp.status);
    }
    // Nothing was created; the server is still healthy.
    let list = app.get("/v1/pipelines").await;
    assert_eq!(list.expect(200)["pipelines"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/pipelines/p").await.expect(200)["version"], 1);
    app.get("/healthz").await.expect(200);
}

#[sqlx::test]
async fn invalid_utf8_and_wrong_content_types_on_every_body_route(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("p", pass_definition()).await;
    let routes = [
        (Method::POST, "/v1/pipelines"),
        (Method::PUT, "/v1/pipelines/p"),
        (Method::POST, "/v1/pipelines/p/executions"),
        (Method::POST, "/v1/pipelines/p/executions/plan"),
    ];
    let invalid_utf8: Vec<Vec<u8>> = vec![
        b"{\"name\":\"\xff\xfe\",\"definition\":{}}".to_vec(),
        b"{\"description\":\"\xc3\x28\"}".to_vec(),
        // An overlong encoding of '/' and a lone surrogate (CESU-8).
        b"{\"name\":\"\xc0\xaf\"}".to_vec(),
        b"{\"name\":\"\xed\xa0\x80\"}".to_vec(),
        // A JSON escape of a lone surrogate: valid UTF-8, invalid Unicode.
        b"{\"name\":\"\\ud800\",\"definition\":{}}".to_vec(),
        b"\xef\xbb\xbf\xff{}".to_vec(),
    ];
    for (method, path) in &routes {
        for body in &invalid_utf8 {
            let resp = send_bytes(&app, method.clone(), path, Some("application/json"), body.clone()).await;
            assert_error_shape(method.as_str(), path, &resp, 400);
            assert_eq!(resp.body["error"]["code"], "ValidationError", "{}", resp.text);
        }
        let valid = json!({"name": "ct", "definition": pass_definition()}).to_string();
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("application/jsonx"),
            Some("json"),
            Some(";;;"),
        ] {
            let resp = send_bytes(&app, method.clone(), path, content_type, valid.clone().into_bytes()).await;
            assert_error_shape(method.as_str(), path, &resp, 415);
            assert_eq!(resp.body["error"]["code"], "UnsupportedMediaType", "{}", resp.text);
        }
    }
    // A body without a content type is what a browser may send cross-site
    // without a preflight: refused (issue 10).
    let body = json!({"name": "untyped", "definition": pass_definition()}).to_string();
    let resp = send_bytes(&app, Method::POST, "/v1/pipelines", None, body.into_bytes()).await;
    assert_error_shape("POST", "/v1/pipelines", &resp, 415);
    // JSON with parameters or a +json suffix is taken as JSON.
    for (name, content_type) in [
        ("charset", Some("application/json; charset=utf-8")),
        ("suffix", Some("application/vnd.stepwise+json")),
        ("upper", Some("Application/JSON")),
    ] {
        let body = json!({"name": name, "definition": pass_definition()}).to_string();
        let resp = send_bytes(&app, Method::POST, "/v1/pipelines", content_type, body.into_bytes()).await;
        resp.expect(201);
    }
    // Invalid UTF-8 in a path segment or a query string.
    let resp = app
        .raw(app.client.get(format!("{}/v1/pipelines/%FF%FE", app.base)))
        .await;
    assert_error_shape("GET", "/v1/pipelines/%FF%FE", &resp, 400);
    let resp = app
        .raw(app.client.get(format!("{}/v1/pipelines?name_prefix=%FF", app.base)))
        .await;
    // Invalid UTF-8 in the query is decoded lossily today (200 with U+FFFD;
    // reported): it must at least be no 5xx and a documented answer.
    assert!(resp.status < 500, "{}", resp.text);
    check_response("GET", "/v1/pipelines", &resp);
    app.get("/healthz").await.expect(200);
}

fn pass_steps(n: usize, chain: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut step = json!({"Name": format!("S{i:05}"), "Type": "Pass", "Arguments": {"i": i}});
            if i > 0 {
                let parent = if chain { i - 1 } else { 0 };
                step["DependsOn"] = json!([format!("S{parent:05}")]);
            }
            step
        })
        .collect()
}

#[sqlx::test]
async fn ten_thousand_step_definitions_are_accepted_and_started(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let chain = definition_with(json!([]), Value::Array(pass_steps(10_000, true)));
    let created = app.create_pipeline("chain", chain).await;
    assert_eq!(created["definition"]["Steps"].as_array().unwrap().len(), 10_000);
    let fan_out = definition_with(json!([]), Value::Array(pass_steps(10_000, false)));
    app.create_pipeline("fan-out", fan_out).await;
    // The chain starts and its first steps run in order.
    let chain_id = app.start("chain", json!({})).await;
    app.wait_step(&chain_id, "S00002", |s| s["status"] == "Succeeded").await;
    // The fan-out starts: every step is there, and the wide layer runs.
    let id = app.start("fan-out", json!({})).await;
    let steps = app.steps(&id).await;
    assert_eq!(steps.len(), 10_000);
    app.wait_step(&id, "S00000", |s| s["status"] == "Succeeded").await;
    wait_until(Duration::from_secs(120), || async {
        let done: i64 =
            sqlx::query_scalar("select count(*) from step_runs where execution_id = $1::uuid and status = 'Succeeded'")
                .bind(&id)
                .fetch_one(&app.db)
                .await
                .unwrap();
        (done >= 50).then_some(())
    })
    .await
    .expect("the fan-out's wide layer runs");
    app.get("/healthz").await.expect(200);
}

/// The whole 10,000-step fan-out to Succeeded. (It once took 30 minutes: each
/// completion re-read the execution's whole definition snapshot. Now the
/// scheduler reads only what it needs and this runs in under a minute.)
#[sqlx::test]
async fn a_ten_thousand_step_fan_out_finishes(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let fan_out = definition_with(json!([]), Value::Array(pass_steps(10_000, false)));
    app.create_pipeline("fan-out", fan_out).await;
    let id = app.start("fan-out", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let execution = loop {
        let resp = app.get(&format!("/v1/executions/{id}?wait_seconds=60")).await;
        let body = resp.expect(200).clone();
        if body["status"] != "Executing" {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fan-out did not finish: {body}"
        );
    };
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let steps = app.steps(&id).await;
    assert_eq!(steps.len(), 10_000);
    assert!(steps.iter().all(|s| s["status"] == "Succeeded"));
    assert_eq!(app.step(&id, "S09999").await["properties"]["Outputs"]["i"], 9999);
}

#[sqlx::test]
async fn parameter_values_of_the_wrong_type_name_the_parameter(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([
            {"Name": "Count", "Type": "Integer", "DefaultValue": 1},
            {"Name": "Rate", "Type": "Float", "DefaultValue": 0.5},
            {"Name": "Flag", "Type": "Boolean", "DefaultValue": false},
            {"Name": "Label", "Type": "String", "DefaultValue": "x"}
        ]),
        json!([{"Name": "A", "Type": "Pass", "Arguments": {}}]),
    );
    app.create_pipeline("typed", definition).await;
    let url = "/v1/pipelines/typed/executions";
    for (name, value) in [
        ("Count", json!(1.5)),
        ("Count", json!(true)),
        ("Count", json!([1])),
        ("Count", json!({"n": 1})),
        ("Count", json!(null)),
        ("Count", json!("1e400")),
        ("Count", json!(1e30)),
        ("Rate", json!("fast")),
        ("Rate", json!(false)),
        ("Rate", json!("NaN")),
        ("Rate", json!("inf")),
        ("Flag", json!("maybe")),
        ("Flag", json!(1)),
        ("Flag", json!([])),
        ("Label", json!(7)),
        ("Label", json!({"a": 1})),
        ("Label", json!(["a"])),
        ("Label", json!(null)),
    ] {
        let resp = app.post(url, &json!({"parameters": {name: value}})).await;
        let message = resp.expect_error(400, "ValidationError");
        assert!(message.contains(name), "{name} = {value}: {message}");
        assert_error_shape("POST", url, &resp, 400);
    }
    // `parameters` itself of the wrong type.
    for parameters in [json!([]), json!("Count=1"), json!(3)] {
        let resp = app.post(url, &json!({"parameters": parameters})).await;
        assert_error_shape("POST", url, &resp, 400);
    }
    // The plan (dry run) reports them among its errors, with a pointer.
    let resp = app
        .post(&format!("{url}/plan"), &json!({"parameters": {"Flag": "maybe"}}))
        .await;
    let plan = resp.expect(200);
    assert_eq!(plan["errors"][0]["path"], "/parameters/Flag", "{plan}");
    assert!(
        plan["errors"][0]["message"].as_str().unwrap().contains("Flag"),
        "{plan}"
    );
    // Nothing was started.
    let list = app.get(url).await;
    assert_eq!(list.expect(200)["executions"].as_array().unwrap().len(), 0);
}

#[sqlx::test]
async fn execution_ids_that_are_neither_uuids_nor_arns_are_400_on_every_route(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let long = "a".repeat(10_000);
    let bad_ids = [
        "not-a-uuid",
        "12345",
        "0190f0f0-0000-7000-8000-00000000000",   // one digit short
        "0190f0f0-0000-7000-8000-0000000000000", // one digit long
        "g190f0f0-0000-7000-8000-000000000000",
        "arn:stepwise:pipelines:local:000000000000:pipeline/p/execution/nope",
        "arn:stepwise:pipelines:local:000000000000:pipeline/p",
        "arn:",
        "arn:aws:sagemaker:us-east-1:1:pipeline/p/execution/x",
        "%00",
        "%20",
        "%C3%BC",
        "%FF",
        "..",
        long.as_str(),
    ];
    let routes: [(Method, &str); 9] = [
        (Method::GET, ""),
        (Method::POST, "/stop"),
        (Method::POST, "/retry"),
        (Method::GET, "/parameters"),
        (Method::GET, "/definition"),
        (Method::GET, "/events"),
        (Method::GET, "/steps"),
        (Method::GET, "/steps/A"),
        (Method::GET, "/steps/A/logs"),
    ];
    for id in bad_ids {
        // An ARN holds '/' and ':'; clients percent-encode it in a path.
        let id = id.replace('/', "%2F");
        for (method, suffix) in &routes {
            let path = format!("/v1/executions/{id}{suffix}");
            let resp = app
                .raw(app.client.request(method.clone(), format!("{}{path}", app.base)))
                .await;
            // `..` is normalised away by some clients; every answer must still be a 4xx.
            if id == ".." {
                assert!((400..500).contains(&resp.status), "{method} {path}: {}", resp.status);
                continue;
            }
            assert_error_shape(method.as_str(), &path, &resp, 400);
            assert_eq!(resp.body["error"]["code"], "ValidationError", "{path}: {}", resp.text);
        }
    }
    // A well-formed id of no execution is a 404, in UUID and ARN form.
    let missing = Uuid::now_v7();
    for id in [
        missing.to_string(),
        format!("arn:stepwise:pipelines:local:000000000000:pipeline%2Fp%2Fexecution%2F{missing}"),
        format!("arn%3Astepwise%3Apipelines%3Alocal%3A000000000000%3Apipeline%2Fp%2Fexecution%2F{missing}"),
    ] {
        for (method, suffix) in &routes {
            let path = format!("/v1/executions/{id}{suffix}");
            let resp = app
                .raw(app.client.request(method.clone(), format!("{}{path}", app.base)))
                .await;
            assert_error_shape(method.as_str(), &path, &resp, 404);
        }
    }
    app.get("/healthz").await.expect(200);
}

#[sqlx::test]
async fn bad_query_values_are_400(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("p", pass_definition()).await;
    let id = app.start("p", json!({})).await;
    app.wait_terminal(&id).await;
    let lists = [
        "/v1/pipelines",
        "/v1/pipelines/p/versions",
        "/v1/pipelines/p/executions",
    ];
    let bad_pages = [
        "limit=-1",
        "limit=1001",
        "limit=1.5",
        "limit=",
        "limit=99999999999999999999",
        "limit=0x10",
        "limit=1&limit=2",
        "next_token=",
        "next_token=AAAA",
        "next_token=%FF",
        "next_token=eyJub3QiOiJ5b3VycyJ9",
        "next_token=bm90IGpzb24",
        "next_token=garbage!",
    ];
    for list in lists {
        for query in bad_pages {
            let path = format!("{list}?{query}");
            let resp = app.raw(app.client.get(format!("{}{path}", app.base))).await;
            assert_error_shape("GET", &path, &resp, 400);
        }
    }
    // A token from one list does not page another.
    let first = app.get("/v1/pipelines?limit=1").await;
    app.create_pipeline("q", pass_definition()).await;
    let first = if first.body["next_token"].is_null() {
        app.get("/v1/pipelines?limit=1").await
    } else {
        first
    };
    let token = first.expect(200)["next_token"].as_str().unwrap().to_string();
    let resp = app.get(&format!("/v1/pipelines/p/executions?next_token={token}")).await;
    assert_error_shape("GET", "/v1/pipelines/p/executions", &resp, 400);

    for query in [
        "wait_seconds=-1",
        "wait_seconds=abc",
        "wait_seconds=1.5",
        "wait_seconds=",
        "wait_seconds=100000",
        "wait_seconds=99999999999999999999",
        "wait_seconds=1e3",
    ] {
        let path = format!("/v1/executions/{id}?{query}");
        let resp = app.raw(app.client.get(format!("{}{path}", app.base))).await;
        assert_error_shape("GET", &path, &resp, 400);
    }
    for query in ["attempt=abc", "attempt=", "attempt=1.5", "attempt=99999999999"] {
        let path = format!("/v1/executions/{id}/steps/A/logs?{query}");
        let resp = app.raw(app.client.get(format!("{}{path}", app.base))).await;
        assert_error_shape("GET", &path, &resp, 400);
    }
    // A number that is no attempt is a 404, as documented.
    for query in ["attempt=0", "attempt=-1", "attempt=2"] {
        let path = format!("/v1/executions/{id}/steps/A/logs?{query}");
        let resp = app.raw(app.client.get(format!("{}{path}", app.base))).await;
        assert_error_shape("GET", &path, &resp, 404);
    }
    for path in [
        "/v1/pipelines/p/executions?status=bogus".to_string(),
        "/v1/pipelines/p/executions?status=".to_string(),
        format!("/v1/pipelines/p/versions/{}", "9".repeat(30)),
        "/v1/pipelines/p/versions/-1".to_string(),
        "/v1/pipelines/p/versions/one".to_string(),
    ] {
        let resp = app.raw(app.client.get(format!("{}{path}", app.base))).await;
        assert_error_shape("GET", &path, &resp, 400);
    }
    app.get("/healthz").await.expect(200);
}

/// The shell of a step that counts its runs in `<dir>/<step>`.
fn counted_steps(dir: &Path, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"Name": format!("S{i:04}"), "Type": "Command", "Arguments": {"Shell": count_run(dir)}}))
            .collect(),
    )
}

#[sqlx::test]
async fn three_worker_processes_and_the_app_run_2000_steps_exactly_once(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 4).await;
    let url = database_url(&app.db).await;
    // Small pools: parallel tests share PostgreSQL's 100 connections.
    let env = [
        ("STEPWISE_WORKER__CONCURRENCY", "4"),
        ("STEPWISE_DATABASE__MAX_CONNECTIONS", "6"),
    ];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(StepwiseProcess::start(&url, app.data_dir.path(), &env).await);
    }
    // Five pipelines of 400 independent Command steps: 2,000 steps in all,
    // each counting its runs in a directory of its pipeline.
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, dir) in dirs.iter().enumerate() {
        app.create_pipeline(
            &format!("wide-{i}"),
            definition_with(json!([]), counted_steps(dir.path(), 400)),
        )
        .await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.start(&format!("wide-{i}"), json!({})).await);
    }
    for id in &ids {
        let execution = app.wait_terminal(id).await;
        assert_eq!(execution["status"], "Succeeded", "{execution}");
    }
    for (i, dir) in dirs.iter().enumerate() {
        for s in 0..400 {
            assert_eq!(runs_of(dir.path(), &format!("S{s:04}")), 1, "wide-{i} step S{s:04}");
        }
        // No counter file other than the 400 steps'.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 400);
    }
    let attempts: i64 = sqlx::query_scalar("select count(*) from step_attempts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(attempts, 2000, "one attempt per step");
    let failed: i64 = sqlx::query_scalar("select count(*) from step_attempts where status <> 'Succeeded'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    let worker_ids: i64 = sqlx::query_scalar("select count(distinct worker_id) from step_attempts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(worker_ids >= 3, "only {worker_ids} workers took part");
    for worker in &mut workers {
        worker.kill().await;
    }
}

#[sqlx::test]
async fn a_worker_process_killed_with_four_steps_running_loses_nothing_committed(db: PgPool) {
    // The app runs the rescuer but no workers of its own.
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 2;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The long steps sleep on attempt 1 only, noting their pid for cleanup.
    let long = |name: &str| {
        json!({"Name": name, "Type": "Command", "DependsOn": ["First"], "Arguments": {"Shell": format!(
            "{}; if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then echo $$ > {d}/{name}.pid; sleep 30; fi; echo '{{\"done\": \"{name}\"}}' > \"$STEPWISE_OUTPUTS\"",
            count_run(dir.path())
        )}})
    };
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "First", "Type": "Command", "Arguments": {"Shell": format!(
                "{}; echo '{{\"value\": 42}}' > \"$STEPWISE_OUTPUTS\"", count_run(dir.path())
            )}},
            long("L1"),
            long("L2"),
            long("L3"),
            long("L4"),
            {"Name": "Last", "Type": "Pass", "DependsOn": ["L1", "L2", "L3", "L4"],
             "Arguments": {"v": {"Get": "Steps.First.Outputs.value"}}}
        ]),
    );
    app.create_pipeline("crash4", definition).await;
    let url = database_url(&app.db).await;
    let env = [
        ("STEPWISE_WORKER__LEASE_SECONDS", "2"),
        ("STEPWISE_WORKER__CONCURRENCY", "4"),
        ("STEPWISE_DATABASE__MAX_CONNECTIONS", "6"),
    ];
    let mut doomed = StepwiseProcess::start(&url, app.data_dir.path(), &env).await;
    let id = app.start("crash4", json!({})).await;
    let pid_files: Vec<_> = ["L1", "L2", "L3", "L4"]
        .iter()
        .map(|s| dir.path().join(format!("{s}.pid")))
        .collect();
    wait_until(Duration::from_secs(60), || async {
        pid_files
            .iter()
            .all(|f| std::fs::read_to_string(f).is_ok_and(|s| s.ends_with('\n')))
            .then_some(())
    })
    .await
    .expect("the doomed worker is running all four long steps");
    let first_before = app.step(&id, "First").await;
    assert_eq!(first_before["status"], "Succeeded");

    // Another worker process is up before the first one dies.
    let mut survivor = StepwiseProcess::start(&url, app.data_dir.path(), &env).await;
    doomed.kill().await;
    // The orphaned step processes are in their own groups; end them like a
    // reboot would.
    for file in &pid_files {
        let pid: i32 = std::fs::read_to_string(file).unwrap().trim().parse().unwrap();
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }

    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    for name in ["L1", "L2", "L3", "L4"] {
        let step = app.step(&id, name).await;
        assert_eq!(step["status"], "Succeeded", "{step}");
        assert_eq!(step["attempt_count"], 2, "{step}");
        assert_eq!(step["attempts"][0]["status"], "Failed", "{step}");
        assert_eq!(step["attempts"][0]["error_type"], "Step.SERVICE_FAULT", "{step}");
        assert_eq!(step["attempts"][1]["status"], "Succeeded", "{step}");
        assert_eq!(step["properties"]["Outputs"], json!({"done": name}), "{step}");
        assert_eq!(runs_of(dir.path(), name), 2, "{name}");
    }
    // The result committed before the crash is intact and was not rerun.
    let first = app.step(&id, "First").await;
    assert_eq!(first["attempt_count"], 1, "{first}");
    assert_eq!(first["properties"], first_before["properties"]);
    assert_eq!(first["properties"]["Outputs"], json!({"value": 42}));
    assert_eq!(first["ended_at"], first_before["ended_at"]);
    assert_eq!(runs_of(dir.path(), "First"), 1);
    assert_eq!(app.step(&id, "Last").await["properties"]["Outputs"]["v"], 42);
    let doomed_attempts: i64 =
        sqlx::query_scalar("select count(*) from step_attempts where error_type = 'Step.SERVICE_FAULT'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(doomed_attempts, 4, "exactly the four lost attempts are faults");
    survivor.kill().await;
}

/// `stepwise serve` (the API and a worker pool in one process) is killed
/// with a step running. A new `serve` over the same database and data
/// directory finishes the execution: the step that had committed is not run
/// again, the lost attempt is failed as a service fault and retried.
#[sqlx::test]
async fn a_serve_process_killed_mid_execution_loses_nothing_committed(db: PgPool) {
    let url = database_url(&db).await;
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let env = [("STEPWISE_WORKER__LEASE_SECONDS", "2")];
    let http = crate::helpers::authed_client(std::time::Duration::from_secs(120));
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "First", "Type": "Command", "Arguments": {"Shell": format!(
                "{}; echo '{{\"value\": 42}}' > \"$STEPWISE_OUTPUTS\"", count_run(dir.path())
            )}},
            {"Name": "Long", "Type": "Command", "DependsOn": ["First"], "Arguments": {"Shell": format!(
                "{}; if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then echo $$ > {d}/long.pid; sleep 30; fi; echo '{{}}' > \"$STEPWISE_OUTPUTS\"",
                count_run(dir.path())
            )}},
            {"Name": "Last", "Type": "Pass", "DependsOn": ["Long"],
             "Arguments": {"v": {"Get": "Steps.First.Outputs.value"}}}
        ]),
    );

    let mut doomed = StepwiseProcess::serve(&url, data.path(), &env).await;
    let api = doomed.base_url.clone().unwrap();
    let created = http
        .post(format!("{api}/v1/pipelines"))
        .json(&json!({"name": "crash-serve", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let started: Value = http
        .post(format!("{api}/v1/pipelines/crash-serve/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["execution_id"].as_str().unwrap().to_string();
    let pid_file = dir.path().join("long.pid");
    wait_until(Duration::from_secs(60), || async {
        std::fs::read_to_string(&pid_file)
            .is_ok_and(|s| s.ends_with('\n'))
            .then_some(())
    })
    .await
    .expect("the doomed server is running the long step");
    let step = |api: String, name: &'static str| {
        let http = http.clone();
        let id = id.clone();
        async move {
            let resp = http
                .get(format!("{api}/v1/executions/{id}/steps/{name}"))
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let first_before = step(api.clone(), "First").await;
    assert_eq!(first_before["status"], "Succeeded");

    doomed.kill().await;
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);

    let mut survivor = StepwiseProcess::serve(&url, data.path(), &env).await;
    let api = survivor.base_url.clone().unwrap();
    let execution = wait_until(Duration::from_secs(120), || async {
        let resp = http
            .get(format!("{api}/v1/executions/{id}?wait_seconds=20"))
            .send()
            .await
            .unwrap();
        let execution: Value = resp.json().await.unwrap();
        (execution["status"] != "Executing").then_some(execution)
    })
    .await
    .expect("the execution ends under the new server");
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let long = step(api.clone(), "Long").await;
    assert_eq!(long["attempt_count"], 2, "{long}");
    assert_eq!(long["attempts"][0]["error_type"], "Step.SERVICE_FAULT", "{long}");
    assert_eq!(long["attempts"][1]["status"], "Succeeded", "{long}");
    let first = step(api.clone(), "First").await;
    assert_eq!(first["attempt_count"], 1, "{first}");
    assert_eq!(first["ended_at"], first_before["ended_at"]);
    assert_eq!(
        runs_of(dir.path(), "First"),
        1,
        "committed before the crash, not run again"
    );
    assert_eq!(runs_of(dir.path(), "Long"), 2);
    assert_eq!(step(api, "Last").await["properties"]["Outputs"]["v"], 42);
    survivor.kill().await;
}
