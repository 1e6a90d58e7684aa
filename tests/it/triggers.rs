//! Trigger-style dependencies (SPEC 8, 2.3): `{"Step": S, "Trigger": T}`
//! with T one of Completed, Failed, Stopped, Any, run with real processes.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, wait_until, TestApp};

fn by_name<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_name"] == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

fn on(step: &str, trigger: &str) -> Value {
    json!({"Step": step, "Trigger": trigger})
}

/// Steps depending on `Up` with every trigger, each counting its runs; `Up`
/// runs `up` (a shell script).
fn every_trigger(dir: &std::path::Path, up: &str) -> Value {
    let count = count_run(dir);
    let cmd = |extra: &str| json!({"Shell": format!("{count}{extra}")});
    definition_with(
        json!([]),
        json!([
            {"Name": "Up", "Type": "Command", "Arguments": {"Shell": format!("{count}; {up}")}},
            {"Name": "OnCompleted", "Type": "Command", "DependsOn": [on("Up", "Completed")], "Arguments": cmd("")},
            {"Name": "Plain", "Type": "Command", "DependsOn": ["Up"], "Arguments": cmd("")},
            {"Name": "OnFailed", "Type": "Command", "DependsOn": [on("Up", "Failed")], "Arguments": cmd("")},
            {"Name": "OnStopped", "Type": "Command", "DependsOn": [on("Up", "Stopped")], "Arguments": cmd("")},
            {"Name": "OnAny", "Type": "Command", "DependsOn": [on("Up", "Any")], "Arguments": cmd("")},
            // A chain below a handler runs by the usual rules.
            {"Name": "AfterFailed", "Type": "Command", "DependsOn": ["OnFailed"], "Arguments": cmd("")},
            {"Name": "AfterAny", "Type": "Pass", "DependsOn": ["OnAny"], "Arguments": {}}
        ]),
    )
}

fn assert_not_met(step: &Value, upstream_status: &str, trigger: &str) {
    assert_eq!(step["status"], "Skipped", "{step}");
    assert_eq!(step["skip_reason"], "TriggerNotMet", "{step}");
    let meta = &step["metadata"]["trigger"];
    assert_eq!(meta["upstream"], "Up", "{step}");
    assert_eq!(meta["upstream_status"], upstream_status, "{step}");
    assert_eq!(meta["trigger"], trigger, "{step}");
    let message = meta["not_met"].as_str().unwrap();
    assert!(
        message.contains(&format!("\"Up\" ended {upstream_status}")) && message.contains(trigger),
        "{message}"
    );
}

#[sqlx::test]
async fn after_a_success_completed_and_any_run_and_failed_and_stopped_are_not_met(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("ok", every_trigger(dir.path(), "true")).await;
    let id = app.start("ok", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let steps = app.steps(&id).await;
    for ran in ["OnCompleted", "Plain", "OnAny", "AfterAny"] {
        assert_eq!(by_name(&steps, ran)["status"], "Succeeded", "{ran}");
    }
    for ran in ["OnCompleted", "Plain", "OnAny"] {
        assert_eq!(runs_of(dir.path(), ran), 1, "{ran}");
    }
    assert_not_met(by_name(&steps, "OnFailed"), "Succeeded", "Failed");
    assert_not_met(by_name(&steps, "OnStopped"), "Succeeded", "Stopped");
    assert_eq!(by_name(&steps, "AfterFailed")["skip_reason"], "UpstreamNotRun");
    assert_eq!(runs_of(dir.path(), "OnFailed") + runs_of(dir.path(), "OnStopped"), 0);
    // The skip's event names the trigger too.
    let reason: String = sqlx::query_scalar(
        "select detail ->> 'reason' from execution_events where execution_id = $1::uuid \
         and step_name = 'OnFailed' and status = 'Skipped'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(reason.contains("\"Up\" ended Succeeded"), "{reason}");
}

#[sqlx::test]
async fn after_a_failure_failed_and_any_handlers_run_and_the_execution_keeps_its_first_failure(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut definition = every_trigger(dir.path(), "exit 3");
    // A handler that fails itself does not replace the execution's reason.
    definition["Steps"].as_array_mut().unwrap().push(json!(
        {"Name": "Alert", "Type": "Command", "DependsOn": [on("Up", "Failed")],
         "Arguments": {"Shell": format!("{}; exit 7", count_run(dir.path()))}}
    ));
    app.create_pipeline("bad", definition).await;
    let id = app.start("bad", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed", "{execution}");
    let reason = execution["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("\"Up\""),
        "the first failure stays the reason: {reason}"
    );
    assert!(!reason.contains("Alert"), "{reason}");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Up")["status"], "Failed");
    for ran in ["OnFailed", "OnAny", "AfterFailed", "AfterAny"] {
        assert_eq!(by_name(&steps, ran)["status"], "Succeeded", "{ran}: {steps:?}");
    }
    for ran in ["OnFailed", "OnAny", "AfterFailed", "Alert"] {
        assert_eq!(runs_of(dir.path(), ran), 1, "{ran}");
    }
    assert_eq!(by_name(&steps, "Alert")["status"], "Failed");
    assert_not_met(by_name(&steps, "OnStopped"), "Failed", "Stopped");
    // A plain entry (or a Completed one, the same) keeps today's meaning.
    assert_eq!(by_name(&steps, "Plain")["skip_reason"], "UpstreamNotRun");
    assert_eq!(by_name(&steps, "OnCompleted")["skip_reason"], "UpstreamNotRun");
    assert_eq!(runs_of(dir.path(), "Plain"), 0);
}

#[sqlx::test]
async fn handlers_run_one_at_a_time_under_max_parallel_steps(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("narrow", every_trigger(dir.path(), "exit 3")).await;
    let id = app.start("narrow", json!({"max_parallel_steps": 1})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed", "{execution}");
    let steps = app.steps(&id).await;
    for ran in ["OnFailed", "OnAny", "AfterFailed", "AfterAny"] {
        assert_eq!(by_name(&steps, ran)["status"], "Succeeded", "{ran}: {steps:?}");
    }
    assert_not_met(by_name(&steps, "OnStopped"), "Failed", "Stopped");
    // Never two at once: each step's run began after the one before ended.
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let mut spans: Vec<_> = steps
        .iter()
        .filter(|s| s["attempt_count"].as_i64() > Some(0))
        .map(|s| (at(&s["started_at"]), at(&s["ended_at"])))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "{spans:?}");
    }
}

#[sqlx::test]
async fn a_stopped_step_triggers_its_stopped_and_any_handlers_and_the_execution_ends_stopped(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let up = format!("echo go > {}; exec sleep 600", started.display());
    app.create_pipeline("stop", every_trigger(dir.path(), &up)).await;
    let id = app.start("stop", json!({})).await;
    wait_until(std::time::Duration::from_secs(30), || async {
        started.exists().then_some(())
    })
    .await
    .expect("Up started");
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Stopped", "{execution}");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Up")["status"], "Stopped");
    for ran in ["OnStopped", "OnAny", "AfterAny"] {
        assert_eq!(by_name(&steps, ran)["status"], "Succeeded", "{ran}: {steps:?}");
    }
    assert_eq!(runs_of(dir.path(), "OnStopped"), 1);
    assert_not_met(by_name(&steps, "OnFailed"), "Stopped", "Failed");
    assert_eq!(by_name(&steps, "Plain")["skip_reason"], "ExecutionStopped");
    assert_eq!(by_name(&steps, "AfterFailed")["skip_reason"], "UpstreamNotRun");
}

#[sqlx::test]
async fn retry_judges_trigger_not_met_steps_again(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let count = count_run(dir.path());
    let gated = format!("{count}; test -f {}", gate.display());
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Up", "Type": "Command", "Arguments": {"Shell": gated}},
            {"Name": "OnFailed", "Type": "Command", "DependsOn": [on("Up", "Failed")], "Arguments": {"Shell": count}},
            {"Name": "OnStopped", "Type": "Command", "DependsOn": [on("Up", "Stopped")], "Arguments": {"Shell": count}},
            // A handler with a plain entry too: Up must succeed for it.
            {"Name": "Report", "Type": "Command", "DependsOn": ["Up", on("OnFailed", "Any")], "Arguments": {"Shell": count}}
        ]),
    );
    app.create_pipeline("again", definition).await;
    let id = app.start("again", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "OnFailed")["status"], "Succeeded");
    assert_not_met(by_name(&steps, "OnStopped"), "Failed", "Stopped");
    assert_not_met(by_name(&steps, "Report"), "Failed", "Completed");

    std::fs::write(&gate, "").unwrap();
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let steps = app.steps(&id).await;
    // Reset and judged again: Report's triggers are now met.
    assert_eq!(by_name(&steps, "Report")["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "Report"), 1);
    assert_not_met(by_name(&steps, "OnStopped"), "Succeeded", "Stopped");
    // A handler that succeeded is kept, as every succeeded step is.
    assert_eq!(runs_of(dir.path(), "OnFailed"), 1);
    assert_eq!(runs_of(dir.path(), "Up"), 2);
}

#[sqlx::test]
async fn the_plan_says_a_handler_runs_only_if_its_trigger_is_met(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("plan", every_trigger(dir.path(), "true")).await;
    let plan = app
        .post("/v1/pipelines/plan/executions/plan", &json!({}))
        .await
        .expect(200)
        .clone();
    let verdict = |name: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_name"] == name)
            .unwrap_or_else(|| panic!("{name}: {plan}"))
            .clone()
    };
    let failed = verdict("OnFailed");
    assert_eq!(failed["verdict"], "RunIfTriggered", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("runs only if \"Up\" ends Failed"),
        "{failed}"
    );
    assert_eq!(verdict("OnStopped")["verdict"], "RunIfTriggered");
    let below = verdict("AfterFailed");
    assert_eq!(below["verdict"], "RunIfTriggered", "{below}");
    assert!(
        below["reason"].as_str().unwrap().contains("\"OnFailed\" runs"),
        "{below}"
    );
    assert_eq!(verdict("OnAny")["verdict"], "Run");
    assert_eq!(verdict("OnCompleted")["verdict"], "Run");
}

#[sqlx::test]
async fn bad_trigger_entries_are_refused_with_one_issue_each(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let cases = [
        (
            json!({"Step": "Up", "Trigger": "Failure"}),
            "Completed, Failed, Stopped, Any",
        ),
        (json!({"Step": "Up"}), "Trigger"),
        (json!({"Step": "Up", "Trigger": "Any", "Extra": 1}), "Extra"),
        (json!({"Step": "Nope", "Trigger": "Any"}), "unknown step"),
    ];
    for (entry, says) in cases {
        let definition = definition_with(
            json!([]),
            json!([
                {"Name": "Up", "Type": "Pass", "Arguments": {}},
                {"Name": "Down", "Type": "Pass", "DependsOn": [entry], "Arguments": {}}
            ]),
        );
        let resp = app
            .post("/v1/pipelines", &json!({"name": "t", "definition": definition}))
            .await;
        resp.expect_error(400, "ValidationError");
        let details = resp.body["error"]["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "{entry}: {details:?}");
        assert!(details[0]["message"].as_str().unwrap().contains(says), "{details:?}");
        let path = details[0]["path"].as_str().unwrap();
        assert!(path.starts_with("/Steps/1/DependsOn/0"), "{details:?}");
    }
    // Reading the outputs of a step it may run without is refused.
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Up", "Type": "Pass", "Arguments": {"x": 1}},
            {"Name": "Down", "Type": "Pass", "DependsOn": [on("Up", "Failed")],
             "Arguments": {"x": {"Get": "Steps.Up.Outputs.x"}}}
        ]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "t", "definition": definition}))
        .await;
    let message = resp.expect_error(400, "ValidationError");
    let details = resp.body["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{message}: {details:?}");
    assert!(
        details[0]["message"].as_str().unwrap().contains("trigger Failed"),
        "{details:?}"
    );
}

#[sqlx::test]
async fn a_trigger_inside_a_for_each_body_is_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Fan", "Type": "ForEach", "Arguments": {
        "IterableItems": [1, 2], "MaxConcurrency": 1,
        "ForEachBody": [
            {"Name": "A", "Type": "Pass", "Arguments": {}},
            {"Name": "B", "Type": "Pass", "DependsOn": [on("A", "Any")], "Arguments": {}}
        ]}}]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "body", "definition": definition}))
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(
        resp.detail_paths(),
        ["/Steps/0/Arguments/ForEachBody/1/DependsOn/0"],
        "{}",
        resp.text
    );
}
