//! Executions through the API with real processes: data flow, conditions,
//! failures, retries, timeouts, stop, retry, idempotency, logs and events.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

fn by_name<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_name"] == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

#[sqlx::test]
async fn data_dependency_carries_a_value_and_an_artifact(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([{"Name": "Base", "Type": "Integer", "DefaultValue": 40}]),
        json!([
            {"Name": "Produce", "Type": "Command", "Arguments": {
                "Shell": "echo \"{\\\"n\\\": $(( BASE + 1 ))}\" > \"$STEPWISE_OUTPUTS\"; echo payload > \"$STEPWISE_ARTIFACTS/data.txt\"; echo '{\"acc\": 0.93}' > \"$STEPWISE_ARTIFACTS/metrics.json\"",
                "Env": {"BASE": {"Get": "Parameters.Base"}}}},
            {"Name": "Consume", "Type": "Command", "Arguments": {
                "Command": ["sh", "-c", "test \"$(cat \"$1/data.txt\")\" = payload && echo \"{\\\"n\\\": $(( $2 + 1 )), \\\"exec\\\": \\\"$STEPWISE_EXECUTION_ID\\\"}\" > \"$STEPWISE_OUTPUTS\"",
                            "consume", {"Get": "Steps.Produce.ArtifactsUri"}, {"Get": "Steps.Produce.Outputs.n"}]}},
            {"Name": "Report", "Type": "Pass", "Arguments": {
                "n": {"Get": "Steps.Consume.Outputs['n']"},
                "acc": {"Std:JsonGet": {"Step": "Produce", "File": "metrics.json", "Path": "acc"}},
                "label": {"Std:Join": {"On": "-", "Values": ["run", {"Get": "Execution.PipelineName"}, {"Get": "Parameters.Base"}]}}}}
        ]),
    );
    app.create_pipeline("flow", definition).await;
    let id = app.start("flow", json!({"parameters": {"Base": "40"}})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    assert_eq!(execution["parameters"]["Base"], 40);
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Produce")["properties"]["Outputs"]["n"], 41);
    assert_eq!(by_name(&steps, "Consume")["properties"]["Outputs"]["n"], 42);
    assert_eq!(by_name(&steps, "Consume")["properties"]["Outputs"]["exec"], id.as_str());
    let report = &by_name(&steps, "Report")["properties"]["Outputs"];
    assert_eq!(report["n"], 42);
    assert_eq!(report["acc"], 0.93);
    assert_eq!(report["label"], "run-flow-40");
    let artifacts = by_name(&steps, "Produce")["properties"]["ArtifactsUri"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&artifacts).join("data.txt").exists());

    let params = app.get(&format!("/v1/executions/{id}/parameters")).await;
    assert_eq!(params.expect(200)["parameters"]["Base"], 40);
    let snapshot = app.get(&format!("/v1/executions/{id}/definition")).await;
    assert_eq!(snapshot.expect(200)["definition"]["Steps"][0]["Name"], "Produce");
    // The ARN works wherever the id does.
    let arn = execution["execution_arn"].as_str().unwrap().replace('/', "%2F");
    app.get(&format!("/v1/executions/{arn}")).await.expect(200);
    let wrong = format!("arn:stepwise:pipelines:local:000000000000:pipeline/other/execution/{id}").replace('/', "%2F");
    app.get(&format!("/v1/executions/{wrong}"))
        .await
        .expect_error(404, "NotFound");
    app.get("/v1/executions/not-an-id")
        .await
        .expect_error(400, "ValidationError");
    app.get(&format!("/v1/executions/{}", uuid::Uuid::new_v4()))
        .await
        .expect_error(404, "NotFound");
}

#[sqlx::test]
async fn both_branches_of_a_condition(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([{"Name": "Score", "Type": "Float", "DefaultValue": 0.5}]),
        json!([
            {"Name": "Gate", "Type": "Condition", "Arguments": {
                "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": {"Get": "Parameters.Score"}, "RightValue": 0.8}],
                "IfSteps": [{"Name": "Publish", "Type": "Pass", "Arguments": {"ok": true}}],
                "ElseSteps": [{"Name": "Retrain", "Type": "Pass", "Arguments": {}}]}},
            {"Name": "AfterPublish", "Type": "Pass", "DependsOn": ["Publish"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("gate", definition).await;

    let high = app.start("gate", json!({"parameters": {"Score": 0.9}})).await;
    assert_eq!(app.wait_terminal(&high).await["status"], "Succeeded");
    let steps = app.steps(&high).await;
    assert_eq!(by_name(&steps, "Gate")["properties"]["Outcome"], true);
    assert_eq!(by_name(&steps, "Gate")["metadata"]["condition"]["outcome"], true);
    assert_eq!(by_name(&steps, "Publish")["status"], "Succeeded");
    assert_eq!(by_name(&steps, "AfterPublish")["status"], "Succeeded");
    assert_eq!(by_name(&steps, "Retrain")["status"], "Skipped");
    assert_eq!(by_name(&steps, "Retrain")["skip_reason"], "ConditionNotMet");

    let low = app.start("gate", json!({"parameters": {"Score": 0.1}})).await;
    assert_eq!(app.wait_terminal(&low).await["status"], "Succeeded");
    let steps = app.steps(&low).await;
    assert_eq!(by_name(&steps, "Retrain")["status"], "Succeeded");
    assert_eq!(by_name(&steps, "Publish")["skip_reason"], "ConditionNotMet");
    assert_eq!(by_name(&steps, "AfterPublish")["skip_reason"], "UpstreamNotRun");
}

#[sqlx::test]
async fn condition_type_errors_name_both_types(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([{"Name": "Word", "Type": "String", "DefaultValue": "abc"}]),
        json!([{"Name": "Gate", "Type": "Condition", "Arguments": {
            "Conditions": [{"Type": "GreaterThan", "LeftValue": {"Get": "Parameters.Word"}, "RightValue": 5}],
            "IfSteps": [], "ElseSteps": []}}]),
    );
    app.create_pipeline("typed", definition).await;
    let id = app.start("typed", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed");
    let gate = app.step(&id, "Gate").await;
    let reason = gate["failure_reason"].as_str().unwrap();
    assert!(reason.contains("String") && reason.contains("Integer"), "{reason}");
}

#[sqlx::test]
async fn a_fail_step_fails_the_execution_and_cannot_be_retried(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([{"Name": "Limit", "Type": "Integer", "DefaultValue": 3}]),
        json!([
            {"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {"On": " ", "Values": ["limit was", {"Get": "Parameters.Limit"}]}}}},
            {"Name": "Never", "Type": "Pass", "DependsOn": ["Stop"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("failing", definition).await;
    let id = app.start("failing", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed");
    assert_eq!(execution["failure_reason"], "limit was 3");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Stop")["status"], "Failed");
    assert_eq!(
        by_name(&steps, "Stop")["metadata"]["fail"]["error_message"],
        "limit was 3"
    );
    assert_eq!(by_name(&steps, "Never")["skip_reason"], "UpstreamNotRun");
    let message = app
        .post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect_error(409, "Conflict");
    assert!(message.contains("Fail step"), "{message}");
}

#[sqlx::test]
async fn a_retry_policy_succeeds_on_the_second_attempt(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let counter = tempfile::tempdir().unwrap();
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Flaky", "Type": "Command",
                "Arguments": {"Shell": format!("{}; echo attempt $STEPWISE_ATTEMPT; [ \"$STEPWISE_ATTEMPT\" -ge 2 ]", count_run(counter.path()))},
                "RetryPolicies": [{"ExceptionType": ["Command.FAILED"], "IntervalSeconds": 1, "BackoffRate": 1.0, "MaxAttempts": 2}]}]),
    );
    app.create_pipeline("flaky", definition).await;
    let id = app.start("flaky", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let step = app.step(&id, "Flaky").await;
    assert_eq!(step["attempt_count"], 2);
    let attempts = step["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["status"], "Failed");
    assert_eq!(attempts[0]["error_type"], "Command.FAILED");
    assert_eq!(attempts[0]["exit_code"], 1);
    assert_eq!(attempts[1]["status"], "Succeeded");
    assert_eq!(runs_of(counter.path(), "Flaky"), 2);
    // Logs are kept per attempt.
    let first = app
        .get(&format!("/v1/executions/{id}/steps/Flaky/logs?attempt=1"))
        .await;
    assert!(first.text.contains("attempt 1"), "{}", first.text);
    let latest = app.get(&format!("/v1/executions/{id}/steps/Flaky/logs")).await;
    assert!(latest.text.contains("attempt 2"), "{}", latest.text);
    app.get(&format!("/v1/executions/{id}/steps/Flaky/logs?attempt=3"))
        .await
        .expect_error(404, "NotFound");
}

#[sqlx::test]
async fn without_a_policy_a_failure_is_final(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Broken", "Type": "Command", "Arguments": {"Shell": "echo oops >&2; exit 7"}},
            {"Name": "Independent", "Type": "Command", "Arguments": {"Shell": "sleep 0.3"}},
            {"Name": "After", "Type": "Pass", "DependsOn": ["Broken"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("broken", definition).await;
    let id = app.start("broken", json!({})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed");
    let reason = execution["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("Broken") && reason.contains("exited with code 7"),
        "{reason}"
    );
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Broken")["attempt_count"], 1);
    assert_eq!(by_name(&steps, "Broken")["metadata"]["command"]["exit_code"], 7);
    assert_eq!(by_name(&steps, "After")["skip_reason"], "UpstreamNotRun");
    let logs = app.get(&format!("/v1/executions/{id}/steps/Broken/logs")).await;
    assert_eq!(logs.expect(200), &Value::Null);
    assert!(logs.text.contains("oops"));
}

#[sqlx::test]
async fn a_timeout_ends_the_command(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.kill_grace_seconds = 1).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Slow", "Type": "Command", "Arguments": {"Shell": "sleep 60", "TimeoutSeconds": 1}}]),
    );
    app.create_pipeline("slow", definition).await;
    let id = app.start("slow", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let step = app.step(&id, "Slow").await;
    assert_eq!(step["error_type"], "Command.TIMEOUT");
    assert!(step["failure_reason"].as_str().unwrap().contains("TimeoutSeconds"));
}

fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[sqlx::test]
async fn stop_ends_the_process_group_and_skips_the_rest(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.kill_grace_seconds = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        // shell.pid first: the test waits for child.pid, then reads both.
        "echo $$ > {d}/shell.pid; sleep 300 & echo $! > {d}/child.pid; wait",
        d = dir.path().display()
    );
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Long", "Type": "Command", "Arguments": {"Shell": script}},
            {"Name": "Next", "Type": "Pass", "DependsOn": ["Long"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("long", definition).await;
    let id = app.start("long", json!({})).await;
    let child_pid = dir.path().join("child.pid");
    crate::helpers::wait_until(std::time::Duration::from_secs(30), || async {
        std::fs::read_to_string(&child_pid).ok().filter(|s| s.ends_with('\n'))
    })
    .await
    .expect("the step started its processes");
    let child: i32 = std::fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap();
    let shell: i32 = std::fs::read_to_string(dir.path().join("shell.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(child));

    let stopping = app.post(&format!("/v1/executions/{id}/stop"), &json!({})).await;
    assert!(matches!(
        stopping.expect(200)["status"].as_str(),
        Some("Stopping" | "Stopped")
    ));
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Stopped");
    let steps = app.steps(&id).await;
    assert_eq!(by_name(&steps, "Long")["status"], "Stopped");
    assert_eq!(by_name(&steps, "Next")["skip_reason"], "ExecutionStopped");
    let gone = crate::helpers::wait_until(std::time::Duration::from_secs(10), || async {
        (!process_alive(child) && !process_alive(shell)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the whole process group was ended");
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect_error(409, "Conflict");
}

#[sqlx::test]
async fn retry_runs_failed_and_unrun_steps_and_keeps_succeeded_ones(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("ok");
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "First", "Type": "Command", "Arguments": {"Shell": count_run(dir.path())}},
            {"Name": "Second", "Type": "Command", "DependsOn": ["First"],
             "Arguments": {"Shell": format!("{}; test -f {}", count_run(dir.path()), gate.display())}},
            {"Name": "Third", "Type": "Command", "DependsOn": ["Second"], "Arguments": {"Shell": count_run(dir.path())}}
        ]),
    );
    app.create_pipeline("retry", definition).await;
    let id = app.start("retry", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    // Still failing: the gate file is missing.
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed");
    std::fs::write(&gate, "").unwrap();
    let retried = app.post(&format!("/v1/executions/{id}/retry"), &json!({})).await;
    assert_eq!(retried.expect(200)["status"], "Executing");
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    assert_eq!(execution["failure_reason"], Value::Null);
    assert_eq!(runs_of(dir.path(), "First"), 1, "succeeded steps are kept");
    assert_eq!(runs_of(dir.path(), "Second"), 3);
    assert_eq!(runs_of(dir.path(), "Third"), 1);
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect_error(409, "Conflict");
}

#[sqlx::test]
async fn idempotent_start_with_a_client_request_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline(
        "idem",
        definition_with(
            json!([{"Name": "P", "Type": "String", "DefaultValue": "a"}]),
            json!([{"Name": "A", "Type": "Pass", "Arguments": {}}]),
        ),
    )
    .await;
    let body = json!({"client_request_token": "ci-run-42", "parameters": {"P": "x"}});
    let first = app.post("/v1/pipelines/idem/executions", &body).await;
    let first_id = first.expect(201)["execution_id"].clone();
    let again = app.post("/v1/pipelines/idem/executions", &body).await;
    assert_eq!(again.expect(200)["execution_id"], first_id);
    let other = app
        .post(
            "/v1/pipelines/idem/executions",
            &json!({"client_request_token": "ci-run-42", "parameters": {"P": "y"}}),
        )
        .await;
    let message = other.expect_error(409, "Conflict");
    assert!(message.contains("ci-run-42"), "{message}");
    let list = app.get("/v1/pipelines/idem/executions").await;
    assert_eq!(list.expect(200)["executions"].as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn parameters_are_checked_at_start(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([
            {"Name": "Epochs", "Type": "Integer"},
            {"Name": "Mode", "Type": "String", "DefaultValue": "fast", "EnumValues": ["fast", "full"]}
        ]),
        json!([{"Name": "A", "Type": "Pass", "Arguments": {"e": {"Get": "Parameters.Epochs"}}}]),
    );
    app.create_pipeline("params", definition).await;
    let url = "/v1/pipelines/params/executions";
    let message = app.post(url, &json!({})).await.expect_error(400, "ValidationError");
    assert!(message.contains("Epochs"), "{message}");
    let resp = app.post(url, &json!({"parameters": {"Epochs": "ten"}})).await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains("Epochs") && message.contains("Integer") && message.contains("ten"),
        "{message}"
    );
    let resp = app
        .post(url, &json!({"parameters": {"Epochs": 1, "Mode": "slow"}}))
        .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("slow") && message.contains("full"), "{message}");
    let resp = app.post(url, &json!({"parameters": {"Epochs": 1, "Nope": 1}})).await;
    assert!(resp.expect_error(400, "ValidationError").contains("Nope"));
    app.post(url, &json!({"parameters": {"Epochs": 1}, "cache_mode": "sometimes"}))
        .await
        .expect_error(400, "ValidationError");
    app.post(url, &json!({"parameters": {"Epochs": 1}, "pipeline_version": 9}))
        .await
        .expect_error(404, "NotFound");
    app.post("/v1/pipelines/none/executions", &json!({}))
        .await
        .expect_error(404, "NotFound");
    let id = app.start("params", json!({"parameters": {"Epochs": "12"}})).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["parameters"], json!({"Epochs": 12, "Mode": "fast"}));
    assert_eq!(app.step(&id, "A").await["properties"]["Outputs"]["e"], 12);
}

#[sqlx::test]
async fn a_path_absent_at_run_time_fails_the_consumer(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Produce", "Type": "Command", "Arguments": {"Shell": "echo '{\"a\": 1}' > $STEPWISE_OUTPUTS"}},
            {"Name": "Consume", "Type": "Pass", "Arguments": {"b": {"Get": "Steps.Produce.Outputs.missing"}}}
        ]),
    );
    app.create_pipeline("absent", definition).await;
    let id = app.start("absent", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let reason = app.step(&id, "Consume").await["failure_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("Steps.Produce.Outputs.missing"), "{reason}");
}

#[sqlx::test]
async fn invalid_outputs_fail_the_step_clearly(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Bad", "Type": "Command", "Arguments": {"Shell": "echo 'not json' > $STEPWISE_OUTPUTS"}}]),
    );
    app.create_pipeline("outputs", definition).await;
    let id = app.start("outputs", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let reason = app.step(&id, "Bad").await["failure_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("STEPWISE_OUTPUTS") && reason.contains("not valid JSON"),
        "{reason}"
    );
}

#[sqlx::test]
async fn max_parallel_steps_bounds_concurrency(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let steps: Vec<Value> = (0..6)
        .map(|i| json!({"Name": format!("S{i}"), "Type": "Command", "Arguments": {"Shell": "sleep 0.2"}}))
        .collect();
    app.create_pipeline("bounded", definition_with(json!([]), Value::Array(steps)))
        .await;
    let id = app.start("bounded", json!({"max_parallel_steps": 2})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let intervals: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select a.started_at, a.ended_at from step_attempts a join step_runs s on s.id = a.step_run_id \
         where s.execution_id = $1::uuid",
    )
    .bind(&id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let most = intervals
        .iter()
        .map(|(start, _)| intervals.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap();
    assert!(most <= 2, "{most} steps ran at once");
}

#[sqlx::test]
async fn events_stream_every_status_change(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Command", "Arguments": {"Shell": "true"}},
            {"Name": "B", "Type": "Pass", "DependsOn": ["A"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("events", definition).await;
    let id = app.start("events", json!({})).await;
    // Follow it while it runs; the stream ends when the execution does.
    let response = app
        .client
        .get(format!("{}/v1/executions/{id}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = tokio::time::timeout(std::time::Duration::from_secs(60), response.text())
        .await
        .unwrap()
        .unwrap();
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for event in &data {
        crate::openapi::check_component("ExecutionEvent", event);
    }
    let seen: Vec<(Option<&str>, &str)> = data
        .iter()
        .map(|e| (e["step_name"].as_str(), e["status"].as_str().unwrap()))
        .collect();
    for expected in [
        (None, "Executing"),
        (Some("A"), "Starting"),
        (Some("A"), "Executing"),
        (Some("A"), "Succeeded"),
        (Some("B"), "Succeeded"),
        (None, "Succeeded"),
    ] {
        assert!(seen.contains(&expected), "missing {expected:?} in {seen:?}");
    }
    let last_id = data[2]["id"].as_i64().unwrap();
    let resumed = app
        .client
        .get(format!("{}/v1/executions/{id}/events", app.base))
        .header("Last-Event-ID", last_id.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        resumed.lines().filter(|l| l.starts_with("data: ")).count(),
        data.len() - 3
    );
}

#[sqlx::test]
async fn list_executions_by_status_with_pages(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline(
        "many",
        definition_with(json!([]), json!([{"Name": "A", "Type": "Pass", "Arguments": {}}])),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = app.start("many", json!({})).await;
        app.wait_terminal(&id).await;
        ids.push(id);
    }
    let page = app
        .get("/v1/pipelines/many/executions?limit=2&status=Succeeded")
        .await
        .expect(200)
        .clone();
    assert_eq!(page["executions"][0]["execution_id"], ids[2].as_str(), "newest first");
    let token = page["next_token"].as_str().unwrap();
    let next = app
        .get(&format!("/v1/pipelines/many/executions?limit=2&next_token={token}"))
        .await;
    assert_eq!(next.expect(200)["executions"][0]["execution_id"], ids[0].as_str());
    let none = app.get("/v1/pipelines/many/executions?status=Failed").await;
    assert_eq!(none.expect(200)["executions"].as_array().unwrap().len(), 0);
    app.get("/v1/pipelines/many/executions?status=Bogus")
        .await
        .expect_error(400, "ValidationError");
    // A pipeline with a running execution cannot be deleted.
    app.create_pipeline(
        "busy",
        definition_with(
            json!([]),
            json!([{"Name": "A", "Type": "Command", "Arguments": {"Shell": "sleep 30"}}]),
        ),
    )
    .await;
    let busy = app.start("busy", json!({})).await;
    app.delete("/v1/pipelines/busy").await.expect_error(409, "Conflict");
    app.post(&format!("/v1/executions/{busy}/stop"), &json!({}))
        .await
        .expect(200);
    app.wait_terminal(&busy).await;
    app.delete("/v1/pipelines/busy").await.expect(204);
}

/// The names of every step of `id`, read a page of `limit` at a time by
/// following `next_token`; and how many pages it took.
async fn step_names_by_pages(app: &TestApp, id: &str, limit: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/v1/executions/{id}/steps?limit={limit}");
        if let Some(token) = &token {
            path.push_str(&format!("&next_token={token}"));
        }
        let page = app.get(&path).await.expect(200).clone();
        let steps = page["steps"].as_array().unwrap();
        assert!(steps.len() <= limit, "{path}: {} steps", steps.len());
        names.extend(steps.iter().map(|s| s["step_name"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => return (names, pages),
        }
        assert!(pages < 1000, "the pages never end");
    }
}

/// Issue 20 item 5: the top-level step list pages with `limit` and
/// `next_token` (SPEC 6, 9), as the other lists do, reused steps included.
#[sqlx::test]
async fn the_steps_list_pages_with_limit_and_next_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let names: Vec<String> = (0..250).map(|i| format!("S{i:03}")).collect();
    let steps: Vec<Value> = names
        .iter()
        .map(|n| json!({"Name": n, "Type": "Pass", "Arguments": {"n": n}}))
        .collect();
    app.create_pipeline("wide", definition_with(json!([]), json!(steps)))
        .await;
    let id = app.start("wide", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");

    let (listed, pages) = step_names_by_pages(&app, &id, 100).await;
    assert_eq!(listed, names, "every step once, in pipeline order");
    assert_eq!(pages, 3);
    // Without a limit: the first page of the default size (SPEC 6: 100).
    let first = app.get(&format!("/v1/executions/{id}/steps")).await.expect(200).clone();
    assert_eq!(first["steps"].as_array().unwrap().len(), 100);
    assert!(first["next_token"].is_string(), "{}", first["next_token"]);
    let all = app
        .get(&format!("/v1/executions/{id}/steps?limit=1000"))
        .await
        .expect(200)
        .clone();
    assert_eq!(all["steps"].as_array().unwrap().len(), 250);
    assert!(all["next_token"].is_null());
    app.get(&format!("/v1/executions/{id}/steps?next_token=garbage"))
        .await
        .expect_error(400, "ValidationError");

    // A selective execution lists its reused steps among the others.
    let body = json!({"selective_execution": {"source_execution": id, "selected_steps": ["S007"]}});
    let selective = app.start("wide", body).await;
    assert_eq!(app.wait_terminal(&selective).await["status"], "Succeeded");
    let (listed, _) = step_names_by_pages(&app, &selective, 7).await;
    assert_eq!(listed, names);
    let reused = app.steps(&selective).await;
    assert_eq!(reused.len(), 250);
    assert_eq!(reused.iter().filter(|s| s["reused_from"].is_object()).count(), 249);
    app.stop().await;
}
