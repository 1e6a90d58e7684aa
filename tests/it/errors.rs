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
