//! Selective execution meets lost artifacts and the cache (issue 20, items
//! 1 to 3): a bystander that cannot be reused is skipped, not a refusal;
//! the iterations of a selected ForEach bypass the cache as their ForEach
//! does; and the plan predicts the iterations' cache hits as the start
//! then serves them.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

fn by_name<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

async fn plan(app: &TestApp, pipeline: &str, body: &Value) -> Value {
    app.post(&format!("/v1/pipelines/{pipeline}/executions/plan"), body)
        .await
        .expect(200)
        .clone()
}

#[sqlx::test]
async fn a_bystander_whose_artifacts_are_gone_is_skipped_not_a_refusal(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let count = count_run(dir.path());
    let writes = format!("{count}; echo x > \"$STEPWISE_ARTIFACTS/out.txt\"");
    let def = definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Command", "Arguments": {"Shell": writes}},
            {"Name": "B", "Type": "Command", "Arguments": {"Shell": writes}},
            {"Name": "C", "Type": "Command", "DependsOn": ["B"], "Arguments": {"Shell": count}}
        ]),
    );
    app.create_pipeline("bystander", def).await;
    let source = app.start("bystander", json!({})).await;
    let done = app.wait_terminal(&source).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let gone = app.data_dir.path().join("artifacts").join(&source).join("A");
    assert!(gone.exists(), "{} exists before it is removed", gone.display());
    std::fs::remove_dir_all(&gone).unwrap();

    // A is neither upstream nor downstream of C: it is Skipped
    // (NotSelected) in the plan and in the start alike.
    let body = json!({"selective_execution": {"source_execution": done["execution_arn"], "selected_steps": ["C"]}});
    let planned = plan(&app, "bystander", &body).await;
    assert_eq!(planned["errors"], json!([]), "{planned}");
    let steps = planned["steps"].as_array().unwrap();
    let a = by_name(steps, "A");
    assert_eq!(a["verdict"], "Skip", "{planned}");
    assert!(a["reason"].as_str().unwrap().contains("NotSelected"), "{planned}");
    assert!(a["reason"].as_str().unwrap().contains("artifacts"), "{planned}");
    assert_eq!(by_name(steps, "B")["verdict"], "Reuse", "{planned}");
    assert_eq!(by_name(steps, "C")["verdict"], "Run", "{planned}");

    let resp = app.post("/v1/pipelines/bystander/executions", &body).await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "A")["status"], "Skipped");
    assert_eq!(by_name(&steps, "A")["skip_reason"], "NotSelected");
    assert!(by_name(&steps, "B")["reused_from"].is_object());
    assert_eq!(by_name(&steps, "C")["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "A"), 1);
    assert_eq!(runs_of(dir.path(), "B"), 1);
    assert_eq!(runs_of(dir.path(), "C"), 2);

    // An upstream step whose artifacts are gone still refuses (rule 3).
    let upstream = app.data_dir.path().join("artifacts").join(&source).join("B");
    std::fs::remove_dir_all(&upstream).unwrap();
    let body = json!({"selective_execution": {"source_execution": source, "selected_steps": ["C"]}});
    let resp = app.post("/v1/pipelines/bystander/executions", &body).await;
    assert_eq!(resp.status, 400, "{}", resp.text);
    assert!(resp.text.contains("\\\"B\\\" cannot be reused"), "{}", resp.text);
    assert!(!resp.text.contains("\\\"A\\\""), "{}", resp.text);
    app.stop().await;
}

/// ForEach `F` over the parameter `Items`, whose body step `Fb` is cached
/// and counts its runs.
fn cached_for_each(dir: &std::path::Path) -> Value {
    let count = count_run(dir);
    definition_with(
        json!([{"Name": "Items", "Type": "String", "DefaultValue": "[\"a\"]"}]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": {"Get": "Parameters.Items"}, "MaxConcurrency": 2,
            "ForEachBody": [{"Name": "Fb", "Type": "Command", "CacheConfig": {"Enabled": true},
                "Arguments": {"Shell": format!("{count}; echo \"{{\\\"v\\\": \\\"$V\\\"}}\" > $STEPWISE_OUTPUTS"),
                              "Env": {"V": {"Get": "ForEach.CurrentItem"}}}}]}}]),
    )
}

async fn run_items(app: &TestApp, items: &str) -> String {
    let id = app.start("fe", json!({"parameters": {"Items": items}})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    id
}

#[sqlx::test]
async fn the_iterations_of_a_selected_for_each_bypass_the_cache(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", cached_for_each(dir.path())).await;
    // The cache gets an entry for "b" (by index 1); the source ran "a" only.
    run_items(&app, r#"["x", "b"]"#).await;
    let source = run_items(&app, r#"["a"]"#).await;
    assert_eq!(runs_of(dir.path(), "F[1].Fb"), 1);

    for (n, selected) in [json!("changed"), json!(["F"])].into_iter().enumerate() {
        let body = json!({"parameters": {"Items": r#"["a", "b"]"#},
                          "selective_execution": {"source_execution": source, "selected_steps": selected}});
        let resp = app.post("/v1/pipelines/fe/executions", &body).await;
        let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
        assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
        let f = app.step(&id, "F").await;
        assert_eq!(f["status"], "Succeeded", "{f}");
        // "b" was not an item of the source: its iteration is selected, so
        // it runs although the cache holds its key.
        let b = app.step(&id, "F[1].Fb").await;
        assert_eq!(b["cache"]["status"], "bypassed", "{selected}: {b}");
        assert!(b["cache_hit"].is_null(), "{selected}: {b}");
        assert_eq!(runs_of(dir.path(), "F[1].Fb"), 2 + n, "{selected}");
    }

    // Asked to use the cache, the selected iteration is served from it.
    let body = json!({"parameters": {"Items": r#"["a", "b"]"#}, "cache_mode": "use",
                      "selective_execution": {"source_execution": source, "selected_steps": ["F"]}});
    let resp = app.post("/v1/pipelines/fe/executions", &body).await;
    let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let b = app.step(&id, "F[1].Fb").await;
    assert_eq!(b["cache"]["status"], "hit", "{b}");
    assert_eq!(runs_of(dir.path(), "F[1].Fb"), 3);
    app.stop().await;
}

/// `Up` (a Command whose output `v` is fixed) then ForEach `F` over
/// ["a", "b"], whose cached body `Fb` reads the item and, with `reads_up`,
/// `Up`'s output.
fn up_then_for_each(dir: &std::path::Path, reads_up: bool, up_salt: &str) -> Value {
    let count = count_run(dir);
    let mut env = json!({"V": {"Get": "ForEach.CurrentItem"}});
    if reads_up {
        env["U"] = json!({"Get": "Steps.Up.Outputs.v"});
    }
    definition_with(
        json!([]),
        json!([
            {"Name": "Up", "Type": "Command", "Arguments": {
                "Shell": format!("{count}; echo {up_salt} >/dev/null; echo '{{\"v\": 1}}' > $STEPWISE_OUTPUTS")}},
            {"Name": "F", "Type": "ForEach", "DependsOn": ["Up"], "Arguments": {
                "IterableItems": ["a", "b"], "MaxConcurrency": 2,
                "ForEachBody": [{"Name": "Fb", "Type": "Command", "CacheConfig": {"Enabled": true},
                    "Arguments": {"Shell": format!("{count}; echo \"{{\\\"v\\\": \\\"$V\\\"}}\" > $STEPWISE_OUTPUTS"),
                                  "Env": env}}]}}
        ]),
    )
}

fn plan_of<'a>(plan: &'a Value, step: &str) -> &'a Value {
    by_name(plan["steps"].as_array().unwrap(), step)
}

/// (reuse, cache_hit, run_unless_unchanged, run) of a ForEach's plan.
fn counts(f: &Value) -> (Value, Value, Value, Value) {
    let its = &f["iterations"];
    (
        its["reuse"].clone(),
        its["cache_hit"].clone(),
        its["run_unless_unchanged"].clone(),
        its["run"].clone(),
    )
}

#[sqlx::test]
async fn the_plan_counts_the_iterations_the_cache_serves(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", up_then_for_each(dir.path(), false, "one"))
        .await;
    let first = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");

    // Every item has an entry, and the keys are known now: both hit.
    let planned = plan(&app, "fe", &json!({})).await;
    let f = plan_of(&planned, "F");
    assert_eq!(counts(f), (json!(0), json!(2), json!(0), json!(0)), "{f}");
    let id = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    for i in 0..2 {
        let b = app.step(&id, &format!("F[{i}].Fb")).await;
        assert_eq!(b["cache"]["status"], "hit", "{b}");
    }
    assert_eq!(runs_of(dir.path(), "F[0].Fb"), 1);

    // With cache_mode "off" nothing is looked up: both run.
    let planned = plan(&app, "fe", &json!({"cache_mode": "off"})).await;
    let f = plan_of(&planned, "F");
    assert_eq!(counts(f), (json!(0), json!(0), json!(0), json!(2)), "{f}");
    app.stop().await;
}

#[sqlx::test]
async fn iterations_whose_keys_are_known_only_at_run_time_get_a_hedged_verdict(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", up_then_for_each(dir.path(), true, "one"))
        .await;
    let first = app.start("fe", json!({})).await;
    let done = app.wait_terminal(&first).await;
    assert_eq!(done["status"], "Succeeded", "{done}");

    // Up runs again (it is not cached), so the body's keys are known only
    // once it has: the plan hedges, and the start then hits both.
    let planned = plan(&app, "fe", &json!({})).await;
    let f = plan_of(&planned, "F");
    assert_eq!(f["verdict"], "RunUnlessUnchanged", "{f}");
    assert_eq!(counts(f), (json!(0), json!(0), json!(2), json!(0)), "{f}");
    let id = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    assert_eq!(app.step(&id, "F[1].Fb").await["cache"]["status"], "hit");

    // "changed" after an edit of Up that leaves its outputs alone: F is
    // downstream of a change, as a top-level step would be; both its
    // iterations are reused after all once Up has run.
    app.put(
        "/v1/pipelines/fe",
        &json!({"definition": up_then_for_each(dir.path(), true, "two")}),
    )
    .await
    .expect(200);
    let body = json!({"selective_execution": {"source_execution": id, "selected_steps": "changed"}});
    let planned = plan(&app, "fe", &body).await;
    assert_eq!(plan_of(&planned, "Up")["verdict"], "Run", "{planned}");
    let f = plan_of(&planned, "F");
    assert_eq!(f["verdict"], "RunUnlessUnchanged", "{f}");
    assert_eq!(counts(f), (json!(0), json!(0), json!(2), json!(0)), "{f}");
    let resp = app.post("/v1/pipelines/fe/executions", &body).await;
    let again = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_terminal(&again).await["status"], "Succeeded");
    for i in 0..2 {
        let b = app.step(&again, &format!("F[{i}].Fb")).await;
        assert!(b["reused_from"].is_object(), "{b}");
    }
    assert_eq!(runs_of(dir.path(), "F[0].Fb"), 1);
    app.stop().await;
}
