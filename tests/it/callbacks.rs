//! Callback steps: the webhook receives the token; success with typed
//! outputs, failure, used and unknown tokens, timeout, stop.

use axum::{routing::post, Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::helpers::{definition_with, TestApp};

/// A webhook receiver that forwards every body it gets.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, rx)
}

fn callback_pipeline(url: Option<&str>, timeout: Option<u64>) -> Value {
    let mut args = json!({"OutputParameters": [{"OutputName": "score", "OutputType": "Float"}, {"OutputName": "label", "OutputType": "String"}]});
    if let Some(url) = url {
        args["Url"] = json!(url);
    }
    if let Some(t) = timeout {
        args["TimeoutSeconds"] = json!(t);
    }
    definition_with(
        json!([]),
        json!([
            {"Name": "Approve", "Type": "Callback", "Arguments": args},
            {"Name": "Use", "Type": "Pass", "Arguments": {"s": {"Get": "Steps.Approve.OutputParameters.score"}}}
        ]),
    )
}

#[sqlx::test]
async fn success_with_typed_outputs_through_the_webhook(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (url, mut hooks) = webhook().await;
    app.create_pipeline("cb", callback_pipeline(Some(&url), None)).await;
    let id = app.start("cb", json!({})).await;
    let hook = tokio::time::timeout(std::time::Duration::from_secs(30), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hook["step_name"], "Approve");
    assert!(hook["execution_arn"].as_str().unwrap().ends_with(&id));
    let token = hook["token"].as_str().unwrap().to_string();
    let step = app.step(&id, "Approve").await;
    assert_eq!(step["status"], "Executing");
    assert_eq!(step["metadata"]["callback"]["token"], token.as_str());

    let bad = app
        .post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {"score": "high", "label": "x"}}),
        )
        .await;
    let message = bad.expect_error(400, "ValidationError");
    assert!(message.contains("score") && message.contains("Float"), "{message}");
    let missing = app
        .post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {"score": 1}}),
        )
        .await;
    assert!(missing.expect_error(400, "ValidationError").contains("label"));

    let ok = app
        .post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {"score": "0.75", "label": "good"}}),
        )
        .await;
    assert_eq!(ok.expect(200)["status"], "Succeeded");
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let step = app.step(&id, "Approve").await;
    assert_eq!(
        step["properties"]["OutputParameters"],
        json!({"score": 0.75, "label": "good"})
    );
    assert_eq!(app.step(&id, "Use").await["properties"]["Outputs"]["s"], 0.75);

    let used = app
        .post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {}}),
        )
        .await;
    used.expect_error(409, "Conflict");
    let unknown = uuid::Uuid::new_v4();
    app.post(&format!("/v1/callbacks/{unknown}/success"), &json!({}))
        .await
        .expect_error(404, "NotFound");
    app.post("/v1/callbacks/not-a-token/failure", &json!({"failure_reason": "x"}))
        .await
        .expect_error(404, "NotFound");
}

#[sqlx::test]
async fn failure_fails_the_execution(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cbf", callback_pipeline(None, None)).await;
    let id = app.start("cbf", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap();
    let resp = app
        .post(
            &format!("/v1/callbacks/{token}/failure"),
            &json!({"failure_reason": "rejected by reviewer"}),
        )
        .await;
    assert_eq!(resp.expect(200)["status"], "Failed");
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed");
    assert!(execution["failure_reason"]
        .as_str()
        .unwrap()
        .contains("rejected by reviewer"));
}

#[sqlx::test]
async fn a_callback_times_out(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.lease_seconds = 1).await;
    app.create_pipeline("cbt", callback_pipeline(None, Some(1))).await;
    let id = app.start("cbt", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    assert_eq!(app.step(&id, "Approve").await["error_type"], "Callback.TIMEOUT");
}

#[sqlx::test]
async fn stop_cancels_the_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cbs", callback_pipeline(None, None)).await;
    let id = app.start("cbs", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap().to_string();
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Stopped");
    assert_eq!(app.step(&id, "Approve").await["status"], "Stopped");
    app.post(
        &format!("/v1/callbacks/{token}/success"),
        &json!({"output_parameters": {"score": 1, "label": "x"}}),
    )
    .await
    .expect_error(409, "Conflict");
}

#[sqlx::test]
async fn a_retried_callback_shows_only_its_new_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cbr", callback_pipeline(None, None)).await;
    let id = app.start("cbr", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let old = step["metadata"]["callback"]["token"].as_str().unwrap().to_string();
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Stopped");
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let reset = app.step(&id, "Approve").await;
    assert_ne!(reset["metadata"]["callback"]["token"], json!(old), "{reset}");
    // Once the new attempt waits, the token shown is its own: the stopped
    // attempt's token never shows again (a client would report with it).
    let step = app
        .wait_step(&id, "Approve", |s| {
            s["attempt_count"] == 2 && s["metadata"]["callback"]["token"].is_string()
        })
        .await;
    let new = step["metadata"]["callback"]["token"].as_str().unwrap();
    assert_ne!(new, old, "{step}");
    app.post(
        &format!("/v1/callbacks/{old}/success"),
        &json!({"output_parameters": {"score": 1, "label": "x"}}),
    )
    .await
    .expect_error(404, "NotFound");
    app.post(
        &format!("/v1/callbacks/{new}/success"),
        &json!({"output_parameters": {"score": 1, "label": "x"}}),
    )
    .await
    .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
}
