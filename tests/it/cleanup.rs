//! The Cleanup step (SPEC 8, 2.5): removes the artifacts directories of
//! named steps of its execution, keeps those of other executions, and
//! refuses the SDK's exact S3 objects with one issue.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

/// `Train` writes an artifact (and counts its runs), then exits `exit`;
/// `Clean` removes its artifacts, depending on it with `dep`.
fn train_and_clean(dir: &Path, exit: i32, cached: bool, resources: Value, dep: Value) -> Value {
    let mut train = json!({"Name": "Train", "Type": "Command", "Arguments": {
        "Shell": format!("{}; echo model > \"$STEPWISE_ARTIFACTS/model.bin\"; exit {exit}", count_run(dir))}});
    if cached {
        train["CacheConfig"] = json!({"Enabled": true});
    }
    definition_with(
        json!([]),
        json!([
            train,
            {"Name": "Clean", "Type": "Cleanup", "DependsOn": [dep], "Arguments": {"Resources": resources}}
        ]),
    )
}

fn artifacts_of(app: &TestApp, execution: &str, step: &str) -> PathBuf {
    app.data_dir.path().join("artifacts").join(execution).join(step)
}

fn artifacts() -> Value {
    json!({"Artifacts": [{"StepName": "Train"}]})
}

#[sqlx::test]
async fn cleanup_after_success_removes_the_artifacts_and_says_so(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline(
        "clean",
        train_and_clean(dir.path(), 0, true, artifacts(), json!("Train")),
    )
    .await;
    let id = app.start("clean", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let train_dir = artifacts_of(&app, &id, "Train");
    assert!(!train_dir.exists(), "{} was removed", train_dir.display());
    let clean = app.step(&id, "Clean").await;
    assert_eq!(clean["step_type"], "Cleanup");
    let removed = &clean["metadata"]["cleanup"]["removed"];
    assert_eq!(removed[0]["step"], "Train", "{clean}");
    assert_eq!(removed[0]["path"], train_dir.display().to_string());
    assert_eq!(clean["metadata"]["cleanup"]["kept"], json!([]));

    // A later execution is not served from the cache entry whose artifacts
    // are gone: Train runs again.
    let again = app.start("clean", json!({})).await;
    assert_eq!(app.wait_terminal(&again).await["status"], "Succeeded");
    let train = app.step(&again, "Train").await;
    assert_eq!(train["cache_hit"], Value::Null, "{train}");
    let miss = train["cache"]["miss_reason"].as_str().unwrap_or_default();
    assert!(miss.contains("lost its artifacts"), "{train}");
    assert_eq!(runs_of(dir.path(), "Train"), 2);

    // Nor does a selective execution reuse the cleaned run.
    let arn = app.get(&format!("/v1/executions/{id}")).await.expect(200)["execution_arn"].clone();
    let resp = app
        .post(
            "/v1/pipelines/clean/executions",
            &json!({"selective_execution": {"source_execution": arn, "selected_steps": ["Clean"]}}),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert!(resp.text.contains("cannot be reused"), "{}", resp.text);
    let plan = app
        .post(
            "/v1/pipelines/clean/executions/plan",
            &json!({"selective_execution": {"source_execution": arn, "selected_steps": "changed"}}),
        )
        .await
        .expect(200)
        .clone();
    let train = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "Train")
        .unwrap();
    assert_eq!(train["verdict"], "Run", "{plan}");
    assert!(train["changes"].to_string().contains("gone"), "{plan}");
}

#[sqlx::test]
async fn cleanup_with_trigger_any_runs_after_a_failure(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    // The SDK's S3 form with only StepName means the same as Artifacts.
    let resources = json!({"S3": [{"StepName": "Train"}]});
    let dep = json!({"Step": "Train", "Trigger": "Any"});
    app.create_pipeline("fails", train_and_clean(dir.path(), 4, false, resources, dep))
        .await;
    let id = app.start("fails", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed", "{execution}");
    assert!(execution["failure_reason"].as_str().unwrap().contains("\"Train\""));
    let clean = app.step(&id, "Clean").await;
    assert_eq!(clean["status"], "Succeeded", "{clean}");
    assert_eq!(clean["metadata"]["cleanup"]["removed"][0]["step"], "Train");
    assert!(!artifacts_of(&app, &id, "Train").exists());
}

#[sqlx::test]
async fn artifacts_of_cache_hits_and_reused_steps_are_kept(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    // Version 1 only trains (and fills the cache).
    let mut first = train_and_clean(dir.path(), 0, true, artifacts(), json!("Train"));
    first["Steps"].as_array_mut().unwrap().truncate(1);
    app.create_pipeline("keep", first).await;
    let source = app.start("keep", json!({})).await;
    assert_eq!(app.wait_terminal(&source).await["status"], "Succeeded");
    let source_dir = artifacts_of(&app, &source, "Train");
    assert!(source_dir.exists());

    // Version 2 cleans up after it: Train is a cache hit, whose artifacts
    // belong to the source execution.
    let second = train_and_clean(dir.path(), 0, true, artifacts(), json!("Train"));
    app.put("/v1/pipelines/keep", &json!({"definition": second}))
        .await
        .expect(200);
    let hit = app.start("keep", json!({})).await;
    assert_eq!(app.wait_terminal(&hit).await["status"], "Succeeded");
    assert!(app.step(&hit, "Train").await["cache_hit"].is_object());
    let clean = app.step(&hit, "Clean").await;
    assert_eq!(clean["metadata"]["cleanup"]["removed"], json!([]), "{clean}");
    let kept = &clean["metadata"]["cleanup"]["kept"][0];
    assert_eq!(kept["step"], "Train");
    assert!(kept["reason"].as_str().unwrap().contains("cache hit"), "{kept}");
    assert!(source_dir.exists(), "the source's artifacts are kept");

    // A selective execution that runs only Clean reuses Train from the source.
    let source_arn = app.get(&format!("/v1/executions/{source}")).await.expect(200)["execution_arn"].clone();
    let resp = app
        .post(
            "/v1/pipelines/keep/executions",
            &json!({"selective_execution": {"source_execution": source_arn, "selected_steps": ["Clean"]}}),
        )
        .await;
    let reusing = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&reusing).await["status"], "Succeeded");
    let clean = app.step(&reusing, "Clean").await;
    let kept = &clean["metadata"]["cleanup"]["kept"][0];
    assert!(kept["reason"].as_str().unwrap().contains("reused"), "{clean}");
    assert!(source_dir.exists(), "the source's artifacts are kept");
    assert_eq!(runs_of(dir.path(), "Train"), 1);
}

#[sqlx::test]
async fn s3_objects_are_refused_with_one_issue(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let resources = json!({"S3": [{"StepName": "Train", "S3Uris": ["s3://bucket/key"]}]});
    let definition = train_and_clean(dir.path(), 0, false, resources, json!("Train"));
    let resp = app
        .post("/v1/pipelines", &json!({"name": "s3", "definition": definition}))
        .await;
    resp.expect_error(400, "ValidationError");
    let details = resp.body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{details:?}");
    assert_eq!(details[0]["path"], "/Steps/1/Arguments/Resources/S3/0/S3Uris");
    let message = details[0]["message"].as_str().unwrap();
    assert!(message.contains("not supported by this server"), "{message}");
    assert!(message.contains("{\"StepName\": \"Train\"}"), "{message}");

    // A named step must be a dependency; Cleanup has no properties.
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Train", "Type": "Pass", "Arguments": {}},
            {"Name": "Clean", "Type": "Cleanup", "Arguments": {"Resources": artifacts()}},
            {"Name": "Read", "Type": "Pass", "Arguments": {"x": {"Get": "Steps.Clean.Outputs"}}}
        ]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "s3", "definition": definition}))
        .await;
    resp.expect_error(400, "ValidationError");
    let paths = resp.detail_paths();
    assert_eq!(
        paths,
        [
            "/Steps/1/Arguments/Resources/Artifacts/0/StepName",
            "/Steps/2/Arguments/x"
        ],
        "{}",
        resp.text
    );
}
