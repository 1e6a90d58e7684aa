//! Callback webhooks cannot be aimed inward: loopback, link-local (cloud
//! metadata) and private addresses are refused unless
//! `callbacks.webhook_allow` lists them, redirects are not followed, and a
//! refusal fails the step with a message naming the host, the reason and
//! the key to change.

use std::time::Duration;

use axum::{
    http::{header, StatusCode},
    routing::post,
    Router,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::helpers::{definition_with, TestApp};

fn hook_pipeline(url: &str) -> Value {
    definition_with(
        json!([]),
        json!([{"Name": "Hook", "Type": "Callback", "Arguments": {"Url": url, "OutputParameters": []}}]),
    )
}

/// A local webhook receiver: answers 200, or 302 to `redirect_to`; every
/// call is forwarded.
async fn receiver(redirect_to: Option<String>) -> (String, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/hook",
        post(move || {
            let (tx, redirect_to) = (tx.clone(), redirect_to.clone());
            async move {
                let _ = tx.send(());
                let mut response = axum::response::Response::new(axum::body::Body::from("ok"));
                if let Some(to) = redirect_to {
                    *response.status_mut() = StatusCode::FOUND;
                    response.headers_mut().insert(header::LOCATION, to.parse().unwrap());
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("127.0.0.1:{port}"), rx)
}

/// Runs a pipeline whose only step calls `url`, and returns the step once the
/// execution has ended.
async fn run_hook(app: &TestApp, name: &str, url: &str) -> Value {
    app.create_pipeline(name, hook_pipeline(url)).await;
    let id = app.start(name, json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed", "{execution}");
    app.step(&id, "Hook").await
}

#[sqlx::test]
async fn inward_webhooks_are_refused_by_default(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.callbacks.webhook_allow.clear()).await;
    let (local, mut calls) = receiver(None).await;
    let port = local.rsplit(':').next().unwrap();
    let cases = [
        (format!("http://{local}/hook"), "127.0.0.1", "loopback"),
        (format!("http://localhost:{port}/hook"), "localhost", "loopback"),
        (format!("http://[::1]:{port}/hook"), "::1", "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "169.254.169.254",
            "metadata",
        ),
        ("http://10.0.0.1/hook".to_string(), "10.0.0.1", "private"),
        ("http://[::ffff:127.0.0.1]:1/hook".to_string(), "127.0.0.1", "loopback"),
    ];
    for (i, (url, host, reason)) in cases.iter().enumerate() {
        let step = run_hook(&app, &format!("inward-{i}"), url).await;
        assert_eq!(step["status"], "Failed", "{url}: {step}");
        assert_eq!(step["error_type"], "Step.INPUT_ERROR", "{url}: {step}");
        let message = step["failure_reason"].as_str().unwrap_or_default();
        assert!(message.contains(host), "{url}: {message}");
        assert!(message.contains(reason), "{url}: {message}");
        assert!(message.contains("callbacks.webhook_allow"), "{url}: {message}");
    }
    assert!(calls.try_recv().is_err(), "no refused webhook reached the receiver");
}

#[sqlx::test]
async fn a_redirect_is_not_followed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (target, mut target_calls) = receiver(None).await;
    let (local, mut calls) = receiver(Some(format!("http://{target}/hook"))).await;
    let step = run_hook(&app, "redirected", &format!("http://{local}/hook")).await;
    let message = step["failure_reason"].as_str().unwrap_or_default();
    assert!(message.contains("302"), "{message}");
    assert!(message.contains("redirects are not followed"), "{message}");
    assert!(message.contains(&format!("http://{target}/hook")), "{message}");
    assert!(calls.try_recv().is_ok(), "the webhook was called");
    assert!(target_calls.try_recv().is_err(), "the redirect was not followed");
}

#[sqlx::test]
async fn listed_hosts_and_blocks_are_allowed(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| {
        c.callbacks.webhook_allow = vec!["LocalHost".into(), "::1/128".into()]
    })
    .await;
    let (local, mut calls) = receiver(None).await;
    let port = local.rsplit(':').next().unwrap();
    for (i, url) in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
    ]
    .iter()
    .enumerate()
    {
        app.create_pipeline(&format!("allowed-{i}"), hook_pipeline(url)).await;
        let id = app.start(&format!("allowed-{i}"), json!({})).await;
        if i == 0 {
            // Listed by name: called, and the step waits for its callback.
            tokio::time::timeout(Duration::from_secs(30), calls.recv())
                .await
                .expect("the allowed webhook is called")
                .unwrap();
            app.wait_step(&id, "Hook", |s| s["status"] == "Executing").await;
        } else {
            // 127.0.0.1 itself is not listed.
            assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
            let step = app.step(&id, "Hook").await;
            assert!(
                step["failure_reason"].as_str().unwrap_or_default().contains("loopback"),
                "{step}"
            );
        }
    }
}

#[sqlx::test]
async fn a_webhook_that_is_not_http_is_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "ftp", "definition": hook_pipeline("ftp://127.0.0.1/hook")}),
        )
        .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("http"), "{message}");
}
