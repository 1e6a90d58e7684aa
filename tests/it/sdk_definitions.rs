//! Definitions emitted by the real SageMaker Python SDK, v2 and v3
//! (tests/fixtures/sagemaker, written by its generate.py): the shapes
//! stepwise runs (Condition, Fail, Callback, ExecutionVariables) run
//! unchanged; a job step stepwise does not run, and `Std:JsonGet` with
//! `S3Uri`, are one clear issue each.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::TestApp;

/// The SDK major versions whose fixtures are committed.
const VERSIONS: [&str; 2] = ["v2", "v3"];

fn fixture(version: &str, name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/sagemaker/{version}/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Creates the pipeline from the fixture as given (the SDK's string form,
/// as `create_pipeline(PipelineDefinition=...)` sends it) and checks that the
/// stored document keeps every top-level key.
async fn create(app: &TestApp, name: &str, definition: &Value) {
    let text = serde_json::to_string(definition).unwrap();
    let created = app
        .post("/v1/pipelines", &json!({"name": name, "definition": text}))
        .await;
    check_kept(&created.expect(201)["definition"], definition);
}

/// Replaces the pipeline's definition with the fixture, as `create` does.
async fn update(app: &TestApp, name: &str, definition: &Value) {
    let text = serde_json::to_string(definition).unwrap();
    let updated = app
        .put(&format!("/v1/pipelines/{name}"), &json!({"definition": text}))
        .await;
    check_kept(&updated.expect(200)["definition"], definition);
}

fn check_kept(stored: &Value, definition: &Value) {
    for key in definition.as_object().unwrap().keys() {
        assert_eq!(stored[key], definition[key], "top-level key {key} not kept as given");
        assert!(stored.as_object().unwrap().contains_key(key), "{key} dropped");
    }
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

#[sqlx::test]
async fn sdk_condition_with_a_fail_step_runs_unchanged(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for version in VERSIONS {
        let name = format!("sdk-condition-fail-{version}");
        create(&app, &name, &fixture(version, "condition_fail")).await;

        let id = app.start(&name, json!({})).await;
        assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded", "{version}");
        let steps = app.steps(&id).await;
        assert_eq!(step(&steps, "CheckAccuracy")["properties"]["Outcome"], true);
        assert_eq!(step(&steps, "AccuracyTooLow")["status"], "Skipped", "{version}");

        let id = app.start(&name, json!({"parameters": {"Accuracy": 0.25}})).await;
        let ended = app.wait_terminal(&id).await;
        assert_eq!(ended["status"], "Failed", "{version}: {ended}");
        let fail = app.step(&id, "AccuracyTooLow").await;
        assert_eq!(
            fail["failure_reason"], "accuracy 0.25 is below 0.5",
            "{version}: {fail}"
        );
    }
}

#[sqlx::test]
async fn sdk_callback_step_runs_as_a_stepwise_callback(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for version in VERSIONS {
        let name = format!("sdk-callback-{version}");
        let definition = fixture(version, "callback");
        let queue = definition["Steps"][0]["SqsQueueUrl"].as_str().unwrap().to_string();
        create(&app, &name, &definition).await;
        let stored = app.get(&format!("/v1/pipelines/{name}")).await;
        assert_eq!(
            stored.expect(200)["definition"]["Steps"][0]["SqsQueueUrl"],
            queue.as_str()
        );

        for (approved, note, status) in [(true, "fine", "Succeeded"), (false, "too slow", "Failed")] {
            let id = app.start(&name, json!({})).await;
            let waiting = app
                .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
                .await;
            assert_eq!(waiting["status"], "Executing");
            assert_eq!(
                waiting["metadata"]["callback"]["sqs_queue_url"],
                queue.as_str(),
                "{version}"
            );
            let token = waiting["metadata"]["callback"]["token"].as_str().unwrap();
            app.post(
                &format!("/v1/callbacks/{token}/success"),
                &json!({"output_parameters": {"approved": approved, "note": note}}),
            )
            .await
            .expect(200);
            let ended = app.wait_terminal(&id).await;
            assert_eq!(ended["status"], status, "{version}: {ended}");
            let steps = app.steps(&id).await;
            let outputs = &step(&steps, "Approve")["properties"]["OutputParameters"];
            assert_eq!(outputs["approved"], approved, "{version}: {outputs}");
            if !approved {
                let rejected = step(&steps, "Rejected");
                assert_eq!(rejected["failure_reason"], "rejected: too slow", "{version}");
            }
        }
    }
}

#[sqlx::test]
async fn sdk_execution_variables_run_unchanged(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for version in VERSIONS {
        // The fixture's Condition compares Execution.PipelineName with this name.
        let name = "sdk-execution-variables";
        let definition = fixture(version, "execution_variables");
        if version == VERSIONS[0] {
            create(&app, name, &definition).await;
        } else {
            update(&app, name, &definition).await;
        }
        let id = app.start(name, json!({})).await;
        assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded", "{version}");

        let id = app.start(name, json!({"parameters": {"Mode": "report"}})).await;
        assert_eq!(app.wait_terminal(&id).await["status"], "Failed", "{version}");
        let report = app.step(&id, "Report").await;
        let message = report["failure_reason"].as_str().unwrap();
        let parts: Vec<&str> = message.split('|').collect();
        assert_eq!(parts.len(), 6, "{message}");
        assert_eq!(parts[0], name);
        assert_eq!(parts[1], id);
        assert!(parts[2].ends_with(&format!("execution/{id}")), "{message}");
        assert!(parts[3].ends_with(&format!("pipeline/{name}")), "{message}");
        assert!(!parts[4].is_empty() && !parts[5].is_empty(), "{message}");
    }
}

/// Creating the fixture fails with exactly one issue, at `path`, whose
/// message names every needle.
async fn one_issue(app: &TestApp, version: &str, fixture_name: &str, path: &str, needles: &[&str]) {
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": format!("sdk-{version}"), "definition": fixture(version, fixture_name)}),
        )
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), [path], "{version} {fixture_name}: {}", resp.text);
    let message = resp.body["error"]["details"][0]["message"].as_str().unwrap();
    for needle in needles {
        assert!(message.contains(needle), "{version} {fixture_name}: {message}");
    }
}

#[sqlx::test]
async fn sdk_job_steps_and_s3_json_get_are_one_issue_each(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let supported = "Command, Pass, Condition, Fail, Callback, ForEach, Cleanup";
    for version in VERSIONS {
        // PropertyFiles, CacheConfig and SageMaker.* retry types on the
        // Processing step, and a JsonGet of its property file: one issue.
        one_issue(
            &app,
            version,
            "processing",
            "/Steps/0/Type",
            &["\"Processing\"", "not run by stepwise", supported],
        )
        .await;
        one_issue(
            &app,
            version,
            "lambda",
            "/Steps/0/Type",
            &["\"Lambda\"", "not run by stepwise", supported],
        )
        .await;
        one_issue(
            &app,
            version,
            "json_get_s3",
            "/Steps/0/Arguments/Conditions/0/LeftValue/Std:JsonGet/S3Uri",
            &["S3Uri", "not supported"],
        )
        .await;
    }
}

/// SDK v3's ForEachStep (its Lambda body written as a Command step by
/// generate.py), CleanupStep and StepDependency with the Failed and Any
/// triggers: accepted as emitted, and run.
#[sqlx::test]
async fn sdk_v3_for_each_cleanup_and_triggers_run(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = fixture("v3", "foreach_cleanup_trigger");
    create(&app, "sdk-foreach", &definition).await;
    let id = app.start("sdk-foreach", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let steps = app.steps(&id).await;
    assert_eq!(step(&steps, "FanOut")["status"], "Succeeded");
    let alert = step(&steps, "FanOutFailed");
    assert_eq!(alert["skip_reason"], "TriggerNotMet", "{alert}");
    let tidy = step(&steps, "Tidy");
    assert_eq!(tidy["status"], "Succeeded", "{tidy}");
    // The SDK's S3 source naming the ForEach removes its iterations' artifacts.
    let removed = tidy["metadata"]["cleanup"]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 3, "{tidy}");
    assert!(
        removed
            .iter()
            .all(|r| r["step"].as_str().unwrap().starts_with("FanOut[")),
        "{tidy}"
    );
}
