//! The pipelines API: create, list, describe, update, versions, delete.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::TestApp;

pub fn definition(steps: Value) -> Value {
    json!({"Version": "2020-12-01", "Metadata": {}, "Parameters": [], "Steps": steps})
}

pub fn pass_definition() -> Value {
    definition(json!([{"Name": "A", "Type": "Pass", "Arguments": {"x": 1}}]))
}

#[sqlx::test]
async fn create_describe_and_duplicate(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body = app
        .post("/v1/pipelines", &json!({"name": "train", "definition": pass_definition(), "description": "d", "display_name": "Train", "max_parallel_steps": 4}))
        .await;
    let created = body.expect(201);
    assert_eq!(created["name"], "train");
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["pipeline_arn"],
        "arn:stepwise:pipelines:local:000000000000:pipeline/train"
    );
    assert_eq!(created["definition"]["Steps"][0]["Name"], "A");
    assert_eq!(created["max_parallel_steps"], 4);

    let described = app.get("/v1/pipelines/train").await;
    assert_eq!(described.expect(200)["display_name"], "Train");

    let again = app
        .post(
            "/v1/pipelines",
            &json!({"name": "train", "definition": pass_definition()}),
        )
        .await;
    let message = again.expect_error(409, "Conflict");
    assert!(message.contains("train"), "{message}");
}

#[sqlx::test]
async fn definition_as_json_string_is_accepted(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let text = pass_definition().to_string();
    let resp = app
        .post("/v1/pipelines", &json!({"name": "str", "definition": text}))
        .await;
    assert_eq!(resp.expect(201)["definition"]["Version"], "2020-12-01");
}

#[sqlx::test]
async fn invalid_definition_lists_every_problem(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let bad = definition(json!([
        {"Name": "A", "Type": "Processing", "Arguments": {}},
        {"Name": "A", "Type": "Pass", "Arguments": {}, "DependsOn": ["Nope"]}
    ]));
    let resp = app
        .post("/v1/pipelines", &json!({"name": "bad", "definition": bad}))
        .await;
    resp.expect_error(400, "ValidationError");
    let paths = resp.detail_paths();
    assert!(paths.len() >= 3, "{paths:?}");
    assert!(paths.iter().any(|p| p == "/Steps/0/Type"), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("/Steps/1/DependsOn")), "{paths:?}");
    assert!(
        resp.text.contains("Processing") && resp.text.contains("Command"),
        "{}",
        resp.text
    );
    assert!(resp.text.contains("Nope"));
    // Nothing was stored.
    app.get("/v1/pipelines/bad").await.expect_error(404, "NotFound");
}

#[sqlx::test]
async fn bad_names_and_fields(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "-bad", "definition": pass_definition()}),
        )
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), vec!["/name"]);
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "ok", "definition": pass_definition(), "max_parallel_steps": 0}),
        )
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), vec!["/max_parallel_steps"]);
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "ok", "definition": pass_definition(), "colour": "red"}),
        )
        .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("colour"), "{message}");
    let resp = app
        .post("/v1/pipelines", &json!({"name": 5, "definition": pass_definition()}))
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), vec!["/name"]);
    let resp = app
        .post("/v1/pipelines", &json!({"definition": pass_definition()}))
        .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("name"), "{message}");
}

#[sqlx::test]
async fn update_makes_immutable_versions(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.post(
        "/v1/pipelines",
        &json!({"name": "p", "definition": pass_definition(), "description": "first"}),
    )
    .await
    .expect(201);
    let v2 = definition(json!([{"Name": "B", "Type": "Pass", "Arguments": {}}]));
    let updated = app.put("/v1/pipelines/p", &json!({"definition": v2})).await;
    let updated = updated.expect(200);
    assert_eq!(updated["version"], 2);
    assert_eq!(
        updated["description"], "first",
        "an update without description keeps it"
    );
    assert_eq!(updated["definition"]["Steps"][0]["Name"], "B");

    let versions = app.get("/v1/pipelines/p/versions").await;
    let versions = versions.expect(200);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert_eq!(versions["versions"][0]["version"], 1);

    let v1 = app.get("/v1/pipelines/p/versions/1").await;
    assert_eq!(v1.expect(200)["definition"]["Steps"][0]["Name"], "A");
    app.get("/v1/pipelines/p/versions/3")
        .await
        .expect_error(404, "NotFound");
    app.get("/v1/pipelines/p/versions/zero")
        .await
        .expect_error(400, "ValidationError");
    app.put("/v1/pipelines/nope", &json!({"definition": v1.body["definition"]}))
        .await
        .expect_error(404, "NotFound");
    let bad = app
        .put("/v1/pipelines/p", &json!({"definition": definition(json!([]))}))
        .await;
    bad.expect_error(400, "ValidationError");
    assert_eq!(
        app.get("/v1/pipelines/p").await.body["version"],
        2,
        "a rejected update adds no version"
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from pipeline_versions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

#[sqlx::test]
async fn list_filters_and_paginates(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for name in ["alpha-1", "alpha-2", "alpha-3", "beta"] {
        app.post("/v1/pipelines", &json!({"name": name, "definition": pass_definition()}))
            .await
            .expect(201);
    }
    let page = app.get("/v1/pipelines?name_prefix=alpha&limit=2").await;
    let page = page.expect(200).clone();
    let names: Vec<&str> = page["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha-1", "alpha-2"]);
    assert!(
        page["pipelines"][0].get("definition").is_none(),
        "lists leave definitions out"
    );
    let token = page["next_token"].as_str().unwrap();
    let next = app
        .get(&format!("/v1/pipelines?name_prefix=alpha&limit=2&next_token={token}"))
        .await;
    let next = next.expect(200);
    assert_eq!(next["pipelines"][0]["name"], "alpha-3");
    assert_eq!(next["next_token"], Value::Null);
    app.get("/v1/pipelines?limit=0")
        .await
        .expect_error(400, "ValidationError");
    app.get("/v1/pipelines?limit=abc")
        .await
        .expect_error(400, "ValidationError");
    app.get("/v1/pipelines?next_token=garbage!")
        .await
        .expect_error(400, "ValidationError");
    app.get("/v1/pipelines?colour=red")
        .await
        .expect_error(400, "ValidationError");
}

#[sqlx::test]
async fn delete_removes_the_pipeline(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.post(
        "/v1/pipelines",
        &json!({"name": "gone", "definition": pass_definition()}),
    )
    .await
    .expect(201);
    app.delete("/v1/pipelines/gone").await.expect(204);
    app.get("/v1/pipelines/gone").await.expect_error(404, "NotFound");
    app.delete("/v1/pipelines/gone").await.expect_error(404, "NotFound");
    // The name is free again.
    app.post(
        "/v1/pipelines",
        &json!({"name": "gone", "definition": pass_definition()}),
    )
    .await
    .expect(201);
}

#[sqlx::test]
async fn accepts_a_sagemaker_sdk_definition(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = json!({
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [
            {"Name": "InputData", "Type": "String", "DefaultValue": "s3://bucket/key"},
            {"Name": "Threshold", "Type": "Float", "DefaultValue": 0.7},
            {"Name": "Mode", "Type": "String", "DefaultValue": "fast", "EnumValues": ["fast", "full"]}
        ],
        "PipelineExperimentConfig": {
            "ExperimentName": {"Get": "Execution.PipelineName"},
            "TrialName": {"Get": "Execution.PipelineExecutionId"}
        },
        "Steps": [
            {"Name": "Eval", "Type": "Command",
             "Arguments": {"Shell": "echo '{\"metrics\":{\"accuracy\":{\"value\":0.9}}}' > $STEPWISE_ARTIFACTS/evaluation.json"},
             "PropertyFiles": [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}],
             "CacheConfig": {"Enabled": true, "ExpireAfter": "P30D"},
             "RetryPolicies": [{"ExceptionType": ["Step.SERVICE_FAULT", "Step.THROTTLING"], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 3}]},
            {"Name": "CheckAccuracy", "Type": "Condition",
             "Arguments": {
                "Conditions": [{"Type": "GreaterThanOrEqualTo",
                                "LeftValue": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.EvaluationReport"}, "Path": "metrics.accuracy.value"}},
                                "RightValue": {"Get": "Parameters.Threshold"}}],
                "IfSteps": [{"Name": "Register", "Type": "Pass", "Arguments": {"model": {"Get": "Parameters.InputData"}}}],
                "ElseSteps": [{"Name": "Fail", "Type": "Fail",
                               "Arguments": {"ErrorMessage": {"Std:Join": {"On": " ", "Values": ["accuracy below", {"Get": "Parameters.Threshold"}]}}}}]}}
        ]
    });
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "sdk", "definition": definition.to_string()}),
        )
        .await;
    let created = resp.expect(201);
    assert_eq!(
        created["definition"]["PipelineExperimentConfig"]["ExperimentName"]["Get"],
        "Execution.PipelineName"
    );
}
