//! Selective execution and caching, exact (issue 11): a plan that says what
//! the start then does, "changed" that sees the content of code files,
//! early cut-off, reasons that name what changed, and reuse that checks the
//! source's outputs are still there. Side-effect counters (`runs_of`) say
//! how often a step really ran.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

/// The verdict and the whole entry of each step of a plan.
async fn plan(app: &TestApp, pipeline: &str, body: Value) -> Vec<(String, Value)> {
    let resp = app
        .post(&format!("/v1/pipelines/{pipeline}/executions/plan"), &body)
        .await;
    let plan = resp.expect(200).clone();
    assert_eq!(plan["errors"], json!([]), "{plan}");
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step_name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn verdict_of<'a>(plan: &'a [(String, Value)], step: &str) -> &'a Value {
    &plan
        .iter()
        .find(|(n, _)| n == step)
        .unwrap_or_else(|| panic!("{step} in plan"))
        .1
}

fn changed() -> Value {
    json!({"selective_execution": {"selected_steps": "changed"}})
}

async fn run(app: &TestApp, pipeline: &str, body: Value) -> (String, Value) {
    let id = app.start(pipeline, body).await;
    let done = app.wait_terminal(&id).await;
    (id, done)
}

/// `A (cached) -> B (cached, reads A's outputs and artifacts path)`.
fn chain(dir: &std::path::Path) -> Value {
    let count = count_run(dir);
    definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Command", "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"},
             "Arguments": {"Shell": format!("{count}; echo a > $STEPWISE_ARTIFACTS/a.txt; echo '{{\"n\": 1}}' > $STEPWISE_OUTPUTS")}},
            {"Name": "B", "Type": "Command", "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"},
             "Arguments": {"Shell": format!("{count}; cat $DIR/a.txt"),
                           "Env": {"DIR": {"Get": "Steps.A.ArtifactsUri"}, "N": {"Get": "Steps.A.Outputs.n"}}}}
        ]),
    )
}

#[sqlx::test]
async fn the_plan_predicts_a_chain_of_cache_hits_and_the_start_does_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("chain", chain(dir.path())).await;
    let first = plan(&app, "chain", json!({})).await;
    assert_eq!(verdict_of(&first, "A")["verdict"], "Run");
    assert_eq!(verdict_of(&first, "B")["verdict"], "Run", "{first:?}");
    run(&app, "chain", json!({})).await;

    let predicted = plan(&app, "chain", json!({})).await;
    assert_eq!(verdict_of(&predicted, "A")["verdict"], "CacheHit", "{predicted:?}");
    assert_eq!(verdict_of(&predicted, "B")["verdict"], "CacheHit", "{predicted:?}");
    let (id, done) = run(&app, "chain", json!({})).await;
    assert_eq!(done["status"], "Succeeded");
    for step in ["A", "B"] {
        assert_eq!(app.step(&id, step).await["cache"]["status"], "hit");
        assert_eq!(runs_of(dir.path(), step), 1);
    }
}

/// A cached step whose key includes the content of `train.py`.
fn with_code(dir: &std::path::Path, code: &std::path::Path) -> Value {
    let count = count_run(dir);
    definition_with(
        json!([{"Name": "Epochs", "Type": "Integer", "DefaultValue": 10}]),
        json!([
            {"Name": "Prepare", "Type": "Command",
             "Arguments": {"Shell": format!("{count}; echo 1,2 > $STEPWISE_ARTIFACTS/data.csv")}},
            {"Name": "Train", "Type": "Command", "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"},
             "Arguments": {"Shell": format!("{count}; sh train.py"),
                           "WorkingDirectory": code.display().to_string(),
                           "CacheInputs": ["train.py"],
                           "Env": {"EPOCHS": {"Get": "Parameters.Epochs"}, "DATA": {"Get": "Steps.Prepare.ArtifactsUri"}}}},
            {"Name": "Report", "Type": "Pass", "DependsOn": ["Train"], "Arguments": {"done": true}}
        ]),
    )
}

#[sqlx::test]
async fn the_plan_hashes_cache_inputs_as_the_worker_does(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("train.py"), "echo v1\n").unwrap();
    let count = count_run(dir.path());
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Train", "Type": "Command", "CacheConfig": {"Enabled": true, "ExpireAfter": "P1D"},
                "Arguments": {"Shell": format!("{count}; sh train.py"),
                              "WorkingDirectory": code.path().display().to_string(),
                              "CacheInputs": ["train.py"]}}]),
    );
    app.create_pipeline("code", definition).await;
    run(&app, "code", json!({})).await;
    let predicted = plan(&app, "code", json!({})).await;
    assert_eq!(verdict_of(&predicted, "Train")["verdict"], "CacheHit", "{predicted:?}");
    let (id, _) = run(&app, "code", json!({})).await;
    assert_eq!(app.step(&id, "Train").await["cache"]["status"], "hit");

    std::fs::write(code.path().join("train.py"), "echo v2\n").unwrap();
    let predicted = plan(&app, "code", json!({})).await;
    assert_eq!(verdict_of(&predicted, "Train")["verdict"], "Run", "{predicted:?}");
    let (id, _) = run(&app, "code", json!({})).await;
    assert_eq!(app.step(&id, "Train").await["cache"]["status"], "miss");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
}

#[sqlx::test]
async fn changed_sees_an_edited_code_file(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("train.py"), "echo v1\n").unwrap();
    app.create_pipeline("ml", with_code(dir.path(), code.path())).await;
    run(&app, "ml", json!({})).await;

    // Nothing changed: everything is reused.
    let same = plan(&app, "ml", changed()).await;
    for step in ["Prepare", "Train", "Report"] {
        assert_eq!(verdict_of(&same, step)["verdict"], "Reuse", "{same:?}");
        assert_eq!(
            verdict_of(&same, step)["reason"],
            "unchanged since the source execution"
        );
    }

    std::fs::write(code.path().join("train.py"), "echo v2\n").unwrap();
    let edited = plan(&app, "ml", changed()).await;
    let train = verdict_of(&edited, "Train");
    assert_eq!(train["verdict"], "Run", "{edited:?}");
    assert_eq!(train["changes"], json!(["CacheInputs train.py: content changed"]));
    assert_eq!(verdict_of(&edited, "Prepare")["verdict"], "Reuse");
    let report = verdict_of(&edited, "Report");
    assert_eq!(report["verdict"], "RunUnlessUnchanged", "{edited:?}");
    assert_eq!(report["changes"], json!(["downstream of Train"]));

    let (id, done) = run(&app, "ml", changed()).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    assert_eq!(runs_of(dir.path(), "Prepare"), 1);
    // Report's inputs are the same after Train re-ran: reused after all.
    let report = app.step(&id, "Report").await;
    assert_eq!(
        report["reused_from"]["reason"], "inputs unchanged after upstream re-ran",
        "{report}"
    );

    // The next "changed" compares with the run that saw the new content.
    let again = plan(&app, "ml", changed()).await;
    assert_eq!(verdict_of(&again, "Train")["verdict"], "Reuse", "{again:?}");
}

/// `Prepare` writes a data file; `Expensive` reads it through Prepare's
/// artifacts path and its output value.
fn cutoff_pipeline(dir: &std::path::Path, prepare: &str) -> Value {
    let count = count_run(dir);
    definition_with(
        json!([]),
        json!([
            {"Name": "Prepare", "Type": "Command",
             "Arguments": {"Shell": format!("{count}; {prepare}")}},
            {"Name": "Expensive", "Type": "Command",
             "Arguments": {"Shell": format!("{count}; cat $DATA/data.csv"),
                           "Env": {"DATA": {"Get": "Steps.Prepare.ArtifactsUri"},
                                   "ROWS": {"Get": "Steps.Prepare.Outputs.rows"}}}}
        ]),
    )
}

#[sqlx::test]
async fn early_cut_off_reuses_a_step_whose_upstream_reran_to_the_same_outputs(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let write = "echo 1,2,3 > $STEPWISE_ARTIFACTS/data.csv; echo '{\"rows\": 3}' > $STEPWISE_OUTPUTS";
    app.create_pipeline("cut", cutoff_pipeline(dir.path(), write)).await;
    run(&app, "cut", json!({})).await;

    // Prepare's command changes, but not what it writes.
    let same_output = format!("echo refactored; {write}");
    app.put(
        "/v1/pipelines/cut",
        &json!({"definition": cutoff_pipeline(dir.path(), &same_output)}),
    )
    .await
    .expect(200);
    let predicted = plan(&app, "cut", changed()).await;
    assert_eq!(verdict_of(&predicted, "Prepare")["verdict"], "Run");
    assert_eq!(verdict_of(&predicted, "Expensive")["verdict"], "RunUnlessUnchanged");
    // Issue 20 item 6: the reason names the upstream step that re-runs.
    assert_eq!(
        verdict_of(&predicted, "Expensive")["reason"],
        "runs unless, once Prepare has run, its inputs equal those of its run in the source \
         execution (early cut-off)"
    );
    let (id, done) = run(&app, "cut", changed()).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(runs_of(dir.path(), "Prepare"), 2);
    assert_eq!(
        runs_of(dir.path(), "Expensive"),
        1,
        "early cut-off saved the expensive step"
    );
    let expensive = app.step(&id, "Expensive").await;
    assert_eq!(
        expensive["reused_from"]["reason"],
        "inputs unchanged after upstream re-ran"
    );
    assert_eq!(expensive["attempts"][0]["status"], "Succeeded", "{expensive}");
    // Its log is the source run's, and the answer says where.
    let log = app.get(&format!("/v1/executions/{id}/steps/Expensive/logs")).await;
    let message = log.expect_error(404, "NotFound");
    assert!(message.contains("reused"), "{message}");

    // Now Prepare writes other data: Expensive runs, and says why.
    let other_data = "echo 4,5,6 > $STEPWISE_ARTIFACTS/data.csv; echo '{\"rows\": 3}' > $STEPWISE_OUTPUTS";
    app.put(
        "/v1/pipelines/cut",
        &json!({"definition": cutoff_pipeline(dir.path(), other_data)}),
    )
    .await
    .expect(200);
    let (id, done) = run(&app, "cut", changed()).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(runs_of(dir.path(), "Expensive"), 2);
    let expensive = app.step(&id, "Expensive").await;
    assert_eq!(expensive["reused_from"], Value::Null);
    let note = &expensive["metadata"]["early_cutoff"];
    assert_eq!(note["reused"], false, "{expensive}");
    assert!(note["reason"].as_str().unwrap().contains("Env.DATA"), "{note}");
}

#[sqlx::test]
async fn plan_reasons_name_what_changed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = |arg: &str, with_new: bool| {
        let mut steps = vec![
            json!({"Name": "Train", "Type": "Command",
                   "Arguments": {"Command": ["sh", "-c", "true", arg], "Env": {"E": {"Get": "Parameters.Epochs"}}}}),
            json!({"Name": "Report", "Type": "Pass", "DependsOn": ["Train"], "Arguments": {}}),
            json!({"Name": "Flaky", "Type": "Command", "DependsOn": ["Report"], "Arguments": {"Shell": "exit $CODE", "Env": {"CODE": {"Get": "Parameters.Code"}}}}),
        ];
        if with_new {
            steps.push(json!({"Name": "Extra", "Type": "Pass", "Arguments": {}}));
        }
        definition_with(
            json!([{"Name": "Epochs", "Type": "Integer", "DefaultValue": 10},
                   {"Name": "Code", "Type": "Integer", "DefaultValue": 1}]),
            json!(steps),
        )
    };
    app.create_pipeline("why", definition("a", false)).await;
    let (_, done) = run(&app, "why", json!({})).await;
    assert_eq!(done["status"], "Failed");

    app.put("/v1/pipelines/why", &json!({"definition": definition("b", true)}))
        .await
        .expect(200);
    let body = json!({"parameters": {"Epochs": 12}, "selective_execution": {"selected_steps": "changed"}});
    let reasons = plan(&app, "why", body).await;
    let changes = |step: &str| verdict_of(&reasons, step)["changes"].clone();
    assert_eq!(
        changes("Train"),
        json!(["parameter Epochs: 10 -> 12", "Arguments.Command[3]: \"a\" -> \"b\""])
    );
    assert_eq!(changes("Report"), json!(["downstream of Train"]));
    assert_eq!(changes("Flaky"), json!(["Failed in the source"]));
    assert_eq!(changes("Extra"), json!(["new step"]));
    for (step, entry) in &reasons {
        assert_ne!(entry["reason"], "", "{step} has a reason");
    }
}

#[sqlx::test]
async fn reuse_checks_that_the_source_outputs_still_exist(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let write = "echo 1 > $STEPWISE_ARTIFACTS/data.csv; echo '{\"rows\": 1}' > $STEPWISE_OUTPUTS";
    app.create_pipeline("gone", cutoff_pipeline(dir.path(), write)).await;
    let (id, _) = run(&app, "gone", json!({})).await;
    let prepare = app.step(&id, "Prepare").await;
    let artifacts = prepare["properties"]["ArtifactsUri"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(&artifacts).unwrap();

    // By hand: the start is refused, naming the step, and the plan says so.
    let body = json!({"selective_execution": {"selected_steps": ["Expensive"]}});
    let refused = app.post("/v1/pipelines/gone/executions", &body).await;
    let message = refused.expect_error(400, "ValidationError");
    assert!(
        message.contains("\"Prepare\"") && message.contains(&artifacts),
        "{message}"
    );
    let planned = app.post("/v1/pipelines/gone/executions/plan", &body).await;
    let planned = planned.expect(200);
    assert!(
        planned["errors"][0]["message"].as_str().unwrap().contains("Prepare"),
        "{planned}"
    );

    // With "changed", the step whose outputs are gone is selected.
    let predicted = plan(&app, "gone", changed()).await;
    let prepare = verdict_of(&predicted, "Prepare");
    assert_eq!(prepare["verdict"], "Run", "{predicted:?}");
    assert!(
        prepare["changes"][0]
            .as_str()
            .unwrap()
            .starts_with("its outputs in the source are gone"),
        "{prepare}"
    );
    let (_, done) = run(&app, "gone", changed()).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(runs_of(dir.path(), "Prepare"), 2);
}
