//! Callback steps: the webhook receives the token; success with typed
//! outputs, failure, used and unknown tokens, timeout, stop.

use axum::{routing::post, Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;

use std::time::Duration;

use crate::helpers::{definition_with, wait_until, TestApp};

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

/// A pipeline whose only step is a Callback: its success is recorded by the
/// leaf fast path, then the execution's finish check runs.
fn leaf_callback_pipeline() -> Value {
    definition_with(
        json!([]),
        json!([{"Name": "Approve", "Type": "Callback", "Arguments": {"OutputParameters": [{"OutputName": "score", "OutputType": "Float"}]}}]),
    )
}

#[sqlx::test]
async fn a_report_sent_again_after_its_success_was_recorded_answers_200(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("again", callback_pipeline(None, None)).await;
    let id = app.start("again", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap();
    let path = format!("/v1/callbacks/{token}/success");
    let body = json!({"output_parameters": {"score": "0.5", "label": "ok"}});
    assert_eq!(app.post(&path, &body).await.expect(200)["status"], "Succeeded");
    // The same report again (its answer was lost on the way): the same answer.
    let again = app.post(&path, &body).await;
    assert_eq!(again.expect(200)["status"], "Succeeded");
    assert_eq!(again.body["step_name"], "Approve");
    // Another result for the same token is still refused.
    let other = json!({"output_parameters": {"score": 0.9, "label": "ok"}});
    app.post(&path, &other).await.expect_error(409, "Conflict");
    // A failure after the recorded success is refused too.
    app.post(
        &format!("/v1/callbacks/{token}/failure"),
        &json!({"failure_reason": "no"}),
    )
    .await
    .expect_error(409, "Conflict");
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    assert_eq!(
        app.step(&id, "Approve").await["properties"]["OutputParameters"],
        json!({"score": 0.5, "label": "ok"})
    );
}

#[sqlx::test]
async fn a_report_whose_finish_check_was_lost_is_answered_200_when_retried(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("leaf", leaf_callback_pipeline()).await;
    let id = app.start("leaf", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap().to_string();
    let path = format!("/v1/callbacks/{token}/success");
    let body = json!({"output_parameters": {"score": 0.25}});

    // The execution's row is held, so the finish check that follows the
    // recorded success waits; then its session is ended: the report fails
    // after its success committed.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("select 1 from executions where id = $1::uuid for no key update")
        .bind(&id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let first = tokio::spawn(app.client.post(format!("{}{path}", app.base)).json(&body).send());
    let waiting = wait_until(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i32>(
            "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' \
             and query = 'select 1 from executions where id = $1 for no key update'",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap()
    })
    .await
    .expect("the finish check waits for the execution's row");
    sqlx::query("select pg_terminate_backend($1)")
        .bind(waiting)
        .execute(&app.db)
        .await
        .unwrap();
    lock.commit().await.unwrap();
    let first = first.await.unwrap().expect("the first report is answered");
    eprintln!("the interrupted report answered {}", first.status());
    assert_eq!(app.step(&id, "Approve").await["status"], "Succeeded", "recorded");

    // The client sends the report again: it was recorded, so it succeeded.
    let again = app.post(&path, &body).await;
    assert_eq!(again.expect(200)["status"], "Succeeded");
    let execution = tokio::time::timeout(Duration::from_secs(30), app.wait_terminal(&id))
        .await
        .expect("the execution ends");
    assert_eq!(execution["status"], "Succeeded", "{execution}");
}
