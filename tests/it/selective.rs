//! Selective execution (SPEC 5), rule by rule, with side-effect counters
//! proving which steps ran.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

fn by_name<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_name"] == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

/// Prepare -> Train -> Evaluate -> Report, and an independent Side step.
fn ml_pipeline(dir: &std::path::Path, train_script: &str) -> Value {
    let count = count_run(dir);
    definition_with(
        json!([
            {"Name": "Rate", "Type": "Integer", "DefaultValue": 1},
            {"Name": "Fail", "Type": "Integer", "DefaultValue": 0}
        ]),
        json!([
            {"Name": "Prepare", "Type": "Command", "Arguments": {
                "Shell": format!("{count}; echo \"{{\\\"v\\\": $RATE, \\\"at\\\": \\\"$STEPWISE_EXECUTION_ID\\\"}}\" > $STEPWISE_OUTPUTS; exit $FAIL"),
                "Env": {"RATE": {"Get": "Parameters.Rate"}, "FAIL": {"Get": "Parameters.Fail"}}}},
            {"Name": "Train", "Type": "Command", "Arguments": {
                "Shell": format!("{count}; {train_script}; echo \"{{\\\"from\\\": \\\"$FROM\\\"}}\" > $STEPWISE_OUTPUTS"),
                "Env": {"FROM": {"Get": "Steps.Prepare.Outputs.at"}}}},
            {"Name": "Evaluate", "Type": "Command", "DependsOn": ["Train"], "Arguments": {"Shell": count.clone()}},
            {"Name": "Report", "Type": "Pass", "DependsOn": ["Evaluate"], "Arguments": {}},
            {"Name": "Side", "Type": "Command", "Arguments": {"Shell": count.clone()}}
        ]),
    )
}

async fn run_full(app: &TestApp, pipeline: &str, body: Value) -> Value {
    let id = app.start(pipeline, body).await;
    app.wait_terminal(&id).await
}

async fn start_selective(app: &TestApp, pipeline: &str, selective: Value) -> crate::helpers::Resp {
    app.post(
        &format!("/v1/pipelines/{pipeline}/executions"),
        &json!({"selective_execution": selective}),
    )
    .await
}

#[sqlx::test]
async fn reuses_the_source_for_unselected_steps_and_runs_only_the_selection(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    assert_eq!(source["status"], "Succeeded");
    let source_arn = source["execution_arn"].as_str().unwrap();
    let source_id = source["execution_id"].as_str().unwrap();

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": source_arn, "selected_steps": ["Train"]}),
    )
    .await;
    let started = resp.expect(201).clone();
    assert_eq!(started["selective_execution"]["source_execution_arn"], source_arn);
    let id = started["execution_id"].as_str().unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "Succeeded");

    assert_eq!(runs_of(dir.path(), "Prepare"), 1, "reused, not run");
    assert_eq!(runs_of(dir.path(), "Train"), 2, "selected, run");
    assert_eq!(runs_of(dir.path(), "Evaluate"), 1, "downstream, not run");
    assert_eq!(runs_of(dir.path(), "Side"), 1, "reused, not run");
    let steps = app.steps(id).await;
    let prepare = by_name(&steps, "Prepare");
    assert_eq!(prepare["status"], "Succeeded");
    assert_eq!(prepare["reused_from"]["source_execution_arn"], source_arn);
    assert_eq!(prepare["attempt_count"], 0, "no worker ran it");
    assert_eq!(prepare["properties"]["Outputs"]["at"], source_id);
    // The selected step read the source's outputs.
    assert_eq!(by_name(&steps, "Train")["properties"]["Outputs"]["from"], source_id);
    assert_eq!(by_name(&steps, "Evaluate")["skip_reason"], "NotSelected");
    assert_eq!(by_name(&steps, "Report")["skip_reason"], "NotSelected");
    assert_eq!(
        by_name(&steps, "Side")["reused_from"]["source_execution_arn"],
        source_arn
    );

    // The bare id works as a source too.
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": source_id, "selected_steps": ["Train", "Evaluate"]}),
    )
    .await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "Evaluate"), 2);
}

/// A reused step refers to the run that produced its outputs, so an
/// execution that itself reused steps can be a source: its reused steps are
/// reused again, with the outputs of the run that made them.
#[sqlx::test]
async fn a_selective_execution_can_be_the_source_of_another(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let first = run_full(&app, "ml", json!({})).await;
    let first_id = first["execution_id"].as_str().unwrap();

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": first_id, "selected_steps": ["Train", "Evaluate", "Report"]}),
    )
    .await;
    let second = resp.expect(201).clone();
    let second_id = second["execution_id"].as_str().unwrap();
    let second_arn = second["execution_arn"].as_str().unwrap();
    assert_eq!(app.wait_terminal(second_id).await["status"], "Succeeded");

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": second_arn, "selected_steps": ["Evaluate"]}),
    )
    .await;
    let third_id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&third_id).await["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "Prepare"), 1, "reused twice, run once");
    assert_eq!(
        runs_of(dir.path(), "Train"),
        2,
        "run by the second, reused by the third"
    );
    assert_eq!(runs_of(dir.path(), "Evaluate"), 3);
    assert_eq!(runs_of(dir.path(), "Side"), 1);

    let steps = app.steps(&third_id).await;
    let prepare = by_name(&steps, "Prepare");
    assert_eq!(prepare["reused_from"]["source_execution_arn"], second_arn);
    assert_eq!(
        prepare["properties"]["Outputs"]["at"], first_id,
        "the first run's outputs"
    );
    let train = by_name(&steps, "Train");
    assert_eq!(train["reused_from"]["source_execution_arn"], second_arn);
    assert_eq!(train["properties"]["Outputs"]["from"], first_id);
    assert_eq!(by_name(&steps, "Report")["skip_reason"], "NotSelected");
    let names: Vec<&str> = steps.iter().map(|s| s["step_name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["Prepare", "Train", "Evaluate", "Report", "Side"],
        "pipeline order"
    );

    // A reused step made no attempt in this execution, so it has no log.
    let detail = app.step(&third_id, "Prepare").await;
    assert_eq!(detail["attempts"], json!([]));
    app.get(&format!("/v1/executions/{third_id}/steps/Prepare/logs"))
        .await
        .expect_error(404, "NotFound");

    // Rule 5 counts reused steps as succeeded: the newest execution in which
    // Prepare and Train succeeded is the third, where both were reused.
    let resp = start_selective(&app, "ml", json!({"selected_steps": ["Evaluate"]})).await;
    let picked = resp.expect(201)["selective_execution"]["source_execution_arn"].clone();
    let third = app.get(&format!("/v1/executions/{third_id}")).await.expect(200).clone();
    assert_eq!(picked, third["execution_arn"]);
}

/// Retrying a selective execution runs the failed selected step again, and
/// it still reads the outputs of the steps it reused.
#[sqlx::test]
async fn a_retried_selective_execution_still_reads_its_reused_steps(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("train-may-pass");
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    let source_id = source["execution_id"].as_str().unwrap();
    // Version 2 trains only once the marker file exists.
    let definition = ml_pipeline(dir.path(), &format!("test -f {} || exit 1", marker.display()));
    app.put("/v1/pipelines/ml", &json!({"definition": definition}))
        .await
        .expect(200);

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": source_id, "selected_steps": ["Train"]}),
    )
    .await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");

    std::fs::write(&marker, "").unwrap();
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Train")["properties"]["Outputs"]["from"], source_id);
    assert!(by_name(&steps, "Prepare")["reused_from"].is_object());
    assert_eq!(by_name(&steps, "Evaluate")["skip_reason"], "NotSelected");
    assert_eq!(runs_of(dir.path(), "Prepare"), 1);
    assert_eq!(
        runs_of(dir.path(), "Train"),
        3,
        "the source, the failed attempt, the retry"
    );
}

#[sqlx::test]
async fn rules_1_and_2_unknown_names_and_closure(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    let arn = source["execution_arn"].as_str().unwrap();

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Trian", "Nope", "Train"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("Trian") && message.contains("Nope"), "{message}");
    assert_eq!(resp.detail_paths(), vec!["/selective_execution/selected_steps"]);

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Prepare", "Evaluate"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains("\"Train\"") && message.contains("\"Prepare\"") && message.contains("\"Evaluate\""),
        "{message}"
    );

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": "everything"}),
    )
    .await;
    resp.expect_error(400, "ValidationError");
}

#[sqlx::test]
async fn rule_3_upstream_must_have_succeeded_in_the_source(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let failed = run_full(&app, "ml", json!({"parameters": {"Fail": 3}})).await;
    assert_eq!(failed["status"], "Failed");
    let arn = failed["execution_arn"].as_str().unwrap();
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Evaluate"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("Prepare") && message.contains("Failed"), "{message}");
    assert!(resp.text.contains("Train"), "{}", resp.text);
}

#[sqlx::test]
async fn rule_4_the_source_is_an_ended_execution_of_the_same_pipeline(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    app.create_pipeline("other", ml_pipeline(dir.path(), "true")).await;
    let other = run_full(&app, "other", json!({})).await;
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": other["execution_id"], "selected_steps": ["Train"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("other") && message.contains("ml"), "{message}");

    app.create_pipeline(
        "slow",
        definition_with(
            json!([]),
            json!([
                {"Name": "A", "Type": "Command", "Arguments": {"Shell": "sleep 30"}},
                {"Name": "B", "Type": "Pass", "DependsOn": ["A"], "Arguments": {}}
            ]),
        ),
    )
    .await;
    let running = app.start("slow", json!({})).await;
    let resp = start_selective(
        &app,
        "slow",
        json!({"source_execution": running, "selected_steps": ["B"]}),
    )
    .await;
    assert!(resp.expect_error(400, "ValidationError").contains("Executing"));
    let missing = uuid::Uuid::new_v4();
    let resp = start_selective(
        &app,
        "slow",
        json!({"source_execution": missing, "selected_steps": ["B"]}),
    )
    .await;
    assert!(resp.expect_error(400, "ValidationError").contains("does not exist"));
    let resp = start_selective(
        &app,
        "slow",
        json!({"source_execution": "garbage", "selected_steps": ["B"]}),
    )
    .await;
    resp.expect_error(400, "ValidationError");
    app.post(&format!("/v1/executions/{running}/stop"), &json!({}))
        .await
        .expect(200);
    app.wait_terminal(&running).await;
}

#[sqlx::test]
async fn rule_5_the_server_picks_the_most_recent_qualifying_source(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let resp = start_selective(&app, "ml", json!({"selected_steps": ["Train"]})).await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains("have dependencies on")
            && message.contains("Prepare")
            && message.contains("no execution of pipeline ml has them all succeeded"),
        "{message}"
    );
    let good = run_full(&app, "ml", json!({})).await;
    let bad = run_full(&app, "ml", json!({"parameters": {"Fail": 1}})).await;
    assert_eq!(bad["status"], "Failed");
    let resp = start_selective(&app, "ml", json!({"selected_steps": ["Train"]})).await;
    let started = resp.expect(201).clone();
    assert_eq!(
        started["selective_execution"]["source_execution_arn"], good["execution_arn"],
        "the failed run does not qualify"
    );
    assert_eq!(
        app.wait_terminal(started["execution_id"].as_str().unwrap()).await["status"],
        "Succeeded"
    );
}

#[sqlx::test]
async fn rule_9_a_step_in_the_branch_not_taken_cannot_be_selected(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([{"Name": "Score", "Type": "Float", "DefaultValue": 0.1}]),
        json!([{"Name": "Gate", "Type": "Condition", "Arguments": {
            "Conditions": [{"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.Score"}, "RightValue": 0.5}],
            "IfSteps": [{"Name": "Publish", "Type": "Pass", "Arguments": {}}],
            "ElseSteps": [{"Name": "Retrain", "Type": "Pass", "Arguments": {}}]}}]),
    );
    app.create_pipeline("gate", definition).await;
    let source = run_full(&app, "gate", json!({})).await;
    let arn = source["execution_arn"].as_str().unwrap();
    let resp = start_selective(
        &app,
        "gate",
        json!({"source_execution": arn, "selected_steps": ["Publish"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("Publish") && message.contains("Gate"), "{message}");
    // The branch that was taken can be re-run; the Condition's outcome is carried over.
    let resp = start_selective(
        &app,
        "gate",
        json!({"source_execution": arn, "selected_steps": ["Retrain"]}),
    )
    .await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Gate")["properties"]["Outcome"], false);
    assert!(by_name(&steps, "Gate")["reused_from"].is_object());
    assert_eq!(by_name(&steps, "Retrain")["attempt_count"], 1);
}

#[sqlx::test]
async fn rule_10_parameters_default_or_inherited(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({"parameters": {"Rate": 5}})).await;
    let arn = source["execution_arn"].as_str().unwrap();
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Prepare"]}),
    )
    .await;
    assert_eq!(resp.expect(201)["parameters"]["Rate"], 1, "defaults by default");
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Prepare"], "inherit_parameters": true}),
    )
    .await;
    assert_eq!(resp.expect(201)["parameters"]["Rate"], 5, "inherited");
    let resp = app
        .post("/v1/pipelines/ml/executions", &json!({"parameters": {"Fail": 0}, "selective_execution": {"source_execution": arn, "selected_steps": ["Prepare"], "inherit_parameters": true}}))
        .await;
    let body = resp.expect(201);
    assert_eq!(body["parameters"], json!({"Rate": 5, "Fail": 0}));
}

#[sqlx::test]
async fn reuse_works_across_a_definition_change(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    let arn = source["execution_arn"].as_str().unwrap();
    // Version 2 changes Train.
    app.put(
        "/v1/pipelines/ml",
        &json!({"definition": ml_pipeline(dir.path(), "echo v2")}),
    )
    .await
    .expect(200);
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Train", "Evaluate", "Report"]}),
    )
    .await;
    let started = resp.expect(201).clone();
    assert_eq!(started["pipeline_version"], 2);
    assert_eq!(
        app.wait_terminal(started["execution_id"].as_str().unwrap()).await["status"],
        "Succeeded"
    );
    assert_eq!(runs_of(dir.path(), "Prepare"), 1);

    // Version 3 adds a step the source never had, upstream of Evaluate.
    let mut v3 = ml_pipeline(dir.path(), "true");
    v3["Steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"Name": "Extra", "Type": "Pass", "Arguments": {}}));
    v3["Steps"][2]["DependsOn"] = json!(["Train", "Extra"]);
    app.put("/v1/pipelines/ml", &json!({"definition": v3}))
        .await
        .expect(200);
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": arn, "selected_steps": ["Evaluate"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("Extra"), "{message}");
}

#[sqlx::test]
async fn changed_selects_what_a_change_affects(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    app.put(
        "/v1/pipelines/ml",
        &json!({"definition": ml_pipeline(dir.path(), "echo changed")}),
    )
    .await
    .expect(200);

    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": source["execution_arn"], "selected_steps": "changed"}),
    )
    .await;
    let started = resp.expect(201).clone();
    let mut selected: Vec<String> =
        serde_json::from_value(started["selective_execution"]["selected_steps"].clone()).unwrap();
    selected.sort();
    assert_eq!(selected, ["Evaluate", "Report", "Train"]);
    let id = started["execution_id"].as_str().unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "Prepare"), 1);
    assert_eq!(runs_of(dir.path(), "Side"), 1);
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    // Evaluate and Report were selected as downstream of Train, which ran
    // again; their inputs came out unchanged, so they were reused after all
    // (early cut-off).
    assert_eq!(runs_of(dir.path(), "Evaluate"), 1);
    for step in ["Evaluate", "Report"] {
        let run = app.step(id, step).await;
        assert_eq!(run["status"], "Succeeded", "{run}");
        assert_eq!(
            run["reused_from"]["reason"], "inputs unchanged after upstream re-ran",
            "{run}"
        );
    }

    // A parameter change: only the steps that read it, and what follows them.
    // Without a source, "changed" compares against the latest execution.
    let resp = app
        .post(
            "/v1/pipelines/ml/executions",
            &json!({"parameters": {"Rate": 7}, "selective_execution": {"selected_steps": "changed"}}),
        )
        .await;
    let started = resp.expect(201).clone();
    let mut selected: Vec<String> =
        serde_json::from_value(started["selective_execution"]["selected_steps"].clone()).unwrap();
    selected.sort();
    assert_eq!(selected, ["Evaluate", "Prepare", "Report", "Train"]);
    app.wait_terminal(started["execution_id"].as_str().unwrap()).await;
    assert_eq!(runs_of(dir.path(), "Side"), 1);
}

#[sqlx::test]
async fn the_plan_reports_verdicts_and_errors_without_starting(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    let arn = source["execution_arn"].as_str().unwrap();
    let body = json!({"selective_execution": {"source_execution": arn, "selected_steps": ["Train"]}});
    let plan = app.post("/v1/pipelines/ml/executions/plan", &body).await;
    let plan = plan.expect(200).clone();
    assert_eq!(plan["errors"], json!([]));
    assert_eq!(plan["source_execution_arn"], arn);
    let verdicts: Vec<(String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_name"].as_str().unwrap().to_string(),
                s["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |name: &str, verdict: &str| {
        assert!(
            verdicts.contains(&(name.to_string(), verdict.to_string())),
            "{name} {verdict} in {verdicts:?}"
        )
    };
    expect("Prepare", "Reuse");
    expect("Train", "Run");
    expect("Evaluate", "Skip");
    expect("Side", "Reuse");
    assert_eq!(plan["steps"][0]["source_execution_arn"], arn);

    let bad = app
        .post(
            "/v1/pipelines/ml/executions/plan",
            &json!({"selective_execution": {"source_execution": arn, "selected_steps": ["Nope"]}}),
        )
        .await;
    let bad = bad.expect(200);
    assert!(bad["errors"][0]["message"].as_str().unwrap().contains("Nope"));
    let executions = app.get("/v1/pipelines/ml/executions").await;
    assert_eq!(
        executions.expect(200)["executions"].as_array().unwrap().len(),
        1,
        "planning started nothing"
    );
    app.post("/v1/pipelines/none/executions/plan", &json!({}))
        .await
        .expect_error(404, "NotFound");
}

#[sqlx::test]
async fn more_than_fifty_steps_can_be_selected(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let steps: Vec<Value> = (0..80)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("S{}", i - 1)] };
            json!({"Name": format!("S{i}"), "Type": "Pass", "DependsOn": deps, "Arguments": {}})
        })
        .collect();
    app.create_pipeline("long", definition_with(json!([]), Value::Array(steps)))
        .await;
    let source = run_full(&app, "long", json!({})).await;
    let selected: Vec<String> = (10..80).map(|i| format!("S{i}")).collect();
    let resp = start_selective(
        &app,
        "long",
        json!({"source_execution": source["execution_arn"], "selected_steps": selected}),
    )
    .await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let steps = app.steps(&id).await;
    assert!(by_name(&steps, "S9")["reused_from"].is_object());
    assert_eq!(by_name(&steps, "S79")["attempt_count"], 1);
}

/// Issue 11 item 2: `inherit_parameters` without `source_execution` picks
/// the source first (rule 5, or the newest ended execution when nothing
/// upstream needs one), then inherits its parameters; the plan agrees.
#[sqlx::test]
async fn inherit_parameters_without_a_source_picks_the_source_first(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;

    // Nothing to inherit from yet: a message about inheriting, not a
    // contradiction.
    let resp = start_selective(
        &app,
        "ml",
        json!({"selected_steps": ["Prepare"], "inherit_parameters": true}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains("inherit_parameters") && message.contains("no finished execution"),
        "{message}"
    );
    assert!(!message.contains("needed"), "{message}");

    let source = run_full(&app, "ml", json!({"parameters": {"Rate": 5}})).await;
    assert_eq!(source["status"], "Succeeded");
    let source_arn = source["execution_arn"].clone();

    // Train needs Prepare from a source (U not empty).
    let body = json!({"selective_execution": {"selected_steps": ["Train"], "inherit_parameters": true}});
    let plan = app
        .post("/v1/pipelines/ml/executions/plan", &body)
        .await
        .expect(200)
        .clone();
    assert_eq!(plan["errors"], json!([]), "{plan}");
    assert_eq!(plan["source_execution_arn"], source_arn);
    let started = app.post("/v1/pipelines/ml/executions", &body).await.expect(201).clone();
    assert_eq!(started["parameters"]["Rate"], 5, "inherited from the picked source");
    assert_eq!(started["selective_execution"]["source_execution_arn"], source_arn);
    app.wait_terminal(started["execution_id"].as_str().unwrap()).await;

    // Prepare has no upstream: the newest ended execution is the source.
    let resp = start_selective(
        &app,
        "ml",
        json!({"selected_steps": ["Prepare"], "inherit_parameters": true}),
    )
    .await;
    let started = resp.expect(201).clone();
    assert_eq!(started["parameters"]["Rate"], 5, "inherited");
    assert!(started["selective_execution"]["source_execution_arn"].is_string());
    app.wait_terminal(started["execution_id"].as_str().unwrap()).await;
}

/// Issue 11 item 6: lists in messages are JSON lists, not Rust's set syntax.
#[sqlx::test]
async fn rule_5_names_the_steps_as_json_lists(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let resp = start_selective(&app, "ml", json!({"selected_steps": ["Train", "Evaluate"]})).await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains(r#"The selected steps ["Evaluate", "Train"] have dependencies on ["Prepare"]"#),
        "{message}"
    );
    assert!(!message.contains('{'), "{message}");
}

/// Issue 11 item 6: an ARN naming another pipeline than the execution's own
/// is explained, not answered with `belongs to pipeline "ml", not "ml"`.
#[sqlx::test]
async fn a_source_arn_that_names_the_wrong_pipeline_is_explained(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let source = run_full(&app, "ml", json!({})).await;
    let arn = source["execution_arn"].as_str().unwrap();
    let wrong = arn.replace("pipeline/ml/", "pipeline/other/");
    assert_ne!(wrong, arn);
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": wrong, "selected_steps": ["Train"]}),
    )
    .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(!message.contains("not \"ml\""), "{message}");
    assert!(
        message.contains("names pipeline other") && message.contains(arn),
        "{message}"
    );
}

/// Issue 11 item 6: the log of a reused step is not "no attempt 0": the 404
/// names the execution and step that ran it, and where its log is.
#[sqlx::test]
async fn the_log_of_a_reused_step_says_where_it_ran(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ml", ml_pipeline(dir.path(), "true")).await;
    let first = run_full(&app, "ml", json!({})).await;
    let first_id = first["execution_id"].as_str().unwrap();
    let first_arn = first["execution_arn"].as_str().unwrap();
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": first_id, "selected_steps": ["Evaluate"]}),
    )
    .await;
    let second_id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    app.wait_terminal(&second_id).await;
    // Reused again from the second: the log is still the first's.
    let resp = start_selective(
        &app,
        "ml",
        json!({"source_execution": second_id, "selected_steps": ["Evaluate"]}),
    )
    .await;
    let third_id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    app.wait_terminal(&third_id).await;

    let resp = app.get(&format!("/v1/executions/{third_id}/steps/Prepare/logs")).await;
    let message = resp.expect_error(404, "NotFound");
    assert!(!message.contains("attempt 0"), "{message}");
    assert!(message.contains(first_arn) && message.contains("reused"), "{message}");
    assert!(
        message.contains(&format!("/v1/executions/{first_id}/steps/Prepare/logs")),
        "{message}"
    );
    app.get(&format!("/v1/executions/{first_id}/steps/Prepare/logs"))
        .await
        .expect(200);
}

/// Issue 11, item 1: `T -> Gate(If [Ok], Else [No (Fail)])`, SageMaker's
/// commonest shape. `No` never ran in the source (its branch was not
/// taken): that alone is no change, so "changed" is not refused by rule 9.
#[sqlx::test]
async fn changed_ignores_a_branch_the_source_did_not_take(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = |shell: &str| {
        definition_with(
            json!([]),
            json!([
                {"Name": "T", "Type": "Command", "Arguments": {"Shell": shell}},
                {"Name": "Gate", "Type": "Condition", "DependsOn": ["T"], "Arguments": {
                    "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}],
                    "IfSteps": [{"Name": "Ok", "Type": "Pass", "Arguments": {}}],
                    "ElseSteps": [{"Name": "No", "Type": "Fail", "Arguments": {"ErrorMessage": "bad"}}]}}
            ]),
        )
    };
    let count = count_run(dir.path());
    app.create_pipeline("gate", gate(&count)).await;
    let source = run_full(&app, "gate", json!({})).await;
    let changed = json!({"source_execution": source["execution_arn"], "selected_steps": "changed"});
    let plan = app
        .post(
            "/v1/pipelines/gate/executions/plan",
            &json!({"selective_execution": changed}),
        )
        .await;
    let plan = plan.expect(200).clone();
    assert_eq!(plan["errors"], json!([]), "{plan}");
    assert!(
        plan["steps"].as_array().unwrap().iter().all(|s| s["verdict"] != "Run"),
        "nothing changed, nothing runs: {plan}"
    );
    // T edited: T and what follows it run again; the Condition decides anew.
    app.put(
        "/v1/pipelines/gate",
        &json!({"definition": gate(&format!("{count}; true"))}),
    )
    .await
    .expect(200);
    let started = start_selective(&app, "gate", changed).await.expect(201).clone();
    let id = started["execution_id"].as_str().unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "T"), 2);
}
