//! The command-line client (`stepwise pipeline|run|executions|logs`): the
//! real binary against a test server, with a token, as a CI job runs it;
//! and what a follower of a run reads (events, live logs).

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::{
    helpers::{definition_with, TestApp, TEST_TOKEN},
    procs::{database_url, StepwiseProcess},
};

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The CLI pointed at `app` by STEPWISE_URL and STEPWISE_TOKEN.
fn cli(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(args)
        .env("STEPWISE_URL", &app.base)
        .env("STEPWISE_TOKEN", TEST_TOKEN)
        .env_remove("STEPWISE_TOKEN_FILE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run(mut command: Command) -> Ran {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the CLI ended in time")
        .expect("the CLI starts");
    Ran {
        code: output.status.code().expect("the CLI exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_definition(dir: &Path, name: &str, definition: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(definition).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

fn shell_step(name: &str, shell: &str, depends_on: &[&str]) -> Value {
    json!({"Name": name, "Type": "Command", "DependsOn": depends_on, "Arguments": {"Shell": shell}})
}

#[sqlx::test]
async fn apply_creates_then_does_nothing_then_updates(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = definition_with(json!([]), json!([shell_step("Build", "echo one", &[])]));
    let file = write_definition(dir.path(), "def.json", &v1);
    let first = run(cli(&app, &["pipeline", "apply", "ci", "-f", &file])).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout.trim(), "pipeline ci created (version 1)");
    let again = run(cli(&app, &["pipeline", "apply", "ci", "-f", &file])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "pipeline ci unchanged (version 1)");
    assert_eq!(app.get("/v1/pipelines/ci").await.expect(200)["version"], 1);
    // The token from a file; JSON output for scripts.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TEST_TOKEN}\n")).unwrap();
    let v2 = definition_with(json!([]), json!([shell_step("Build", "echo two", &[])]));
    let file = write_definition(dir.path(), "def.json", &v2);
    let mut command = cli(&app, &["pipeline", "apply", "ci", "-f", &file, "--output", "json"]);
    command
        .env_remove("STEPWISE_TOKEN")
        .arg("--token-file")
        .arg(&token_file);
    let updated = run(command).await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    let doc: Value = serde_json::from_str(&updated.stdout).expect("--output json prints JSON");
    assert_eq!(doc["action"], "updated");
    assert_eq!(doc["pipeline"]["version"], 2);
    // A wrong token is refused by the server: exit code 4, the reason shown.
    let mut command = cli(&app, &["pipeline", "apply", "ci", "-f", &file]);
    command.env("STEPWISE_TOKEN", "sw_not_a_token_anyone_issued_0123456789");
    let refused = run(command).await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    app.stop().await;
}

#[sqlx::test]
async fn run_wait_exits_with_how_the_execution_ended(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline(
        "ok",
        definition_with(
            json!([{"Name": "Greeting", "Type": "String", "DefaultValue": "x"}]),
            json!([
                {"Name": "Hello", "Type": "Command", "Arguments": {
                    "Shell": "echo \"hello $WHO\"", "Env": {"WHO": {"Get": "Parameters.Greeting"}}}},
                shell_step("After", "echo after", &["Hello"])
            ]),
        ),
    )
    .await;
    app.create_pipeline(
        "bad",
        definition_with(
            json!([]),
            json!([
                shell_step("Break", "echo about to fail; exit 3", &[]),
                shell_step("Never", "true", &["Break"])
            ]),
        ),
    )
    .await;
    let ok = run(cli(&app, &["run", "ok", "-p", "Greeting=world", "--wait", "--logs"])).await;
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    for expected in [
        "Hello: started",
        "Hello | hello world",
        "Hello: succeeded",
        "After: succeeded",
        "execution Succeeded",
    ] {
        assert!(ok.stdout.contains(expected), "{expected:?} in\n{}", ok.stdout);
    }
    let bad = run(cli(&app, &["run", "bad", "--wait"])).await;
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .contains("Break: failed: Command.FAILED: the command exited with code 3"),
        "{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("Never: skipped (UpstreamNotRun)"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("execution Failed: step \"Break\" failed"),
        "{}",
        bad.stdout
    );
    assert!(
        !bad.stdout.contains("about to fail"),
        "no logs without --logs:\n{}",
        bad.stdout
    );
    // JSON: one document on stdout, the progress on stderr.
    let json_run = run(cli(&app, &["run", "bad", "--wait", "--output", "json"])).await;
    assert_eq!(json_run.code, 1);
    let doc: Value = serde_json::from_str(&json_run.stdout).expect("--output json prints one JSON document");
    assert_eq!(doc["status"], "Failed");
    assert!(json_run.stderr.contains("Break: failed"), "{}", json_run.stderr);
    // Without --wait: started, exit 0; an unknown pipeline: refused, 4.
    let started = run(cli(&app, &["run", "bad", "--output", "json"])).await;
    assert_eq!(started.code, 0);
    let doc: Value = serde_json::from_str(&started.stdout).unwrap();
    assert!(doc["execution_arn"].is_string());
    let unknown = run(cli(&app, &["run", "nope", "--wait"])).await;
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);
    app.stop().await;
}

#[sqlx::test]
async fn select_changed_and_plan_start_selective_executions(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let steps = |train: &str| {
        definition_with(
            json!([]),
            json!([
                shell_step("Prepare", "echo prepared", &[]),
                shell_step("Train", train, &["Prepare"]),
                shell_step("Report", "echo reported", &["Train"])
            ]),
        )
    };
    let file = write_definition(dir.path(), "def.json", &steps("echo train v1"));
    assert_eq!(run(cli(&app, &["pipeline", "apply", "ml", "-f", &file])).await.code, 0);
    // The first --changed has nothing to compare with: a full run.
    let full = run(cli(&app, &["run", "ml", "--changed", "--wait"])).await;
    assert_eq!(full.code, 0, "{}\n{}", full.stdout, full.stderr);
    assert!(
        full.stdout
            .contains("no finished execution to compare with: every step runs"),
        "{}",
        full.stdout
    );
    assert!(full.stdout.contains("Prepare: succeeded"), "{}", full.stdout);
    let selected = run(cli(
        &app,
        &["run", "ml", "--select", "Report", "--wait", "--output", "json"],
    ))
    .await;
    assert_eq!(selected.code, 0, "{}", selected.stderr);
    let execution: Value = serde_json::from_str(&selected.stdout).unwrap();
    assert_eq!(execution["selective_execution"]["selected_steps"], json!(["Report"]));
    assert!(
        selected.stderr.contains("Prepare: reused (the outputs of "),
        "{}",
        selected.stderr
    );
    assert!(selected.stderr.contains("Report: succeeded"), "{}", selected.stderr);
    // Only Train changed: the plan says so, and --changed runs it and below.
    let file = write_definition(dir.path(), "def.json", &steps("echo train v2"));
    assert_eq!(run(cli(&app, &["pipeline", "apply", "ml", "-f", &file])).await.code, 0);
    let plan = run(cli(&app, &["run", "ml", "--changed", "--plan"])).await;
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.starts_with("Reuse") && l.contains("Prepare")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.lines().any(|l| l.starts_with("Run") && l.contains("Train")),
        "{}",
        plan.stdout
    );
    let changed = run(cli(&app, &["run", "ml", "--changed", "--wait"])).await;
    assert_eq!(changed.code, 0, "{}\n{}", changed.stdout, changed.stderr);
    assert!(changed.stdout.contains("Prepare: reused"), "{}", changed.stdout);
    assert!(changed.stdout.contains("Train: succeeded"), "{}", changed.stdout);
    // Report runs only if what it reads changed: it reads nothing of Train's,
    // so it takes its earlier outputs (early cut-off), and says so.
    assert!(
        changed.stdout.contains("Report: reused (the outputs of "),
        "{}",
        changed.stdout
    );
    // Once, with why: it was compared when runnable, not reused at the start.
    let report_lines: Vec<&str> = changed
        .stdout
        .lines()
        .filter(|l| l.starts_with("Report: reused"))
        .collect();
    assert_eq!(report_lines.len(), 1, "{}", changed.stdout);
    assert!(
        report_lines[0].contains("inputs unchanged after upstream re-ran"),
        "{}",
        changed.stdout
    );
    let id = changed.stdout.lines().find_map(|l| l.strip_prefix("started ")).unwrap();
    let id = id.rsplit('/').next().unwrap();
    let described = app.get(&format!("/v1/executions/{id}")).await.expect(200).clone();
    // "changed" resolved: Train and what depends on it.
    let mut selected: Vec<&str> = described["selective_execution"]["selected_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    selected.sort();
    assert_eq!(selected, ["Report", "Train"]);
    // executions list and describe see it.
    let list = run(cli(&app, &["executions", "list", "ml", "--output", "json"])).await;
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list["executions"].as_array().unwrap().len(), 3);
    let describe = run(cli(&app, &["executions", "describe", id])).await;
    assert_eq!(describe.code, 0, "{}", describe.stderr);
    assert!(describe.stdout.contains("reused from"), "{}", describe.stdout);
    app.stop().await;
}

#[sqlx::test]
async fn logs_follow_streams_a_running_step_until_it_ends(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let shell = format!("echo before; read word < {}; echo \"after $word\"", fifo.display());
    app.create_pipeline(
        "live",
        definition_with(json!([]), json!([shell_step("Wait", &shell, &[])])),
    )
    .await;
    let id = app.start("live", json!({})).await;
    let mut follow = cli(&app, &["logs", &id, "Wait", "--follow"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = follow.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Written while the follower waits: the step is blocked on the fifo.
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("before"));
    let writer = tokio::task::spawn_blocking(move || std::fs::write(&fifo, "go\n"));
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("after go"));
    writer.await.unwrap().unwrap();
    // The step ended: so does the follower.
    assert_eq!(next_line(&mut lines).await, None);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the follower ends with the step")
        .unwrap();
    assert!(status.success());
    // The same log through the API, from the database.
    let log = app.get(&format!("/v1/executions/{id}/steps/Wait/logs")).await;
    assert_eq!(log.text, "before\nafter go\n");
    app.stop().await;
}

#[sqlx::test]
async fn events_carry_failure_reasons_and_cache_hits(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline(
        "ev",
        definition_with(
            json!([{"Name": "Fail", "Type": "Integer", "DefaultValue": 0}]),
            json!([
                {"Name": "Cached", "Type": "Command", "Arguments": {"Shell": "echo cached"},
                 "CacheConfig": {"Enabled": true, "ExpireAfter": "P30D"}},
                {"Name": "Maybe", "Type": "Command", "DependsOn": ["Cached"],
                 "Arguments": {"Shell": "exit $FAIL", "Env": {"FAIL": {"Get": "Parameters.Fail"}}}}
            ]),
        ),
    )
    .await;
    let first = app.start("ev", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    let second = app.start("ev", json!({"parameters": {"Fail": 4}})).await;
    assert_eq!(app.wait_terminal(&second).await["status"], "Failed");
    let events = events_of(&app, &second).await;
    let find = |step: Option<&str>, status: &str| {
        events
            .iter()
            .find(|e| e["step_name"].as_str() == step && e["status"] == status)
            .unwrap_or_else(|| panic!("no {status} event of {step:?} in {events:#?}"))
            .clone()
    };
    let cached = find(Some("Cached"), "Succeeded");
    assert!(
        cached["detail"]["cache_hit"]["source_execution_arn"]
            .as_str()
            .unwrap()
            .ends_with(&first),
        "{cached}"
    );
    let failed = find(Some("Maybe"), "Failed");
    assert_eq!(failed["detail"]["error_type"], "Command.FAILED");
    assert_eq!(failed["detail"]["failure_reason"], "the command exited with code 4");
    let ended = find(None, "Failed");
    assert_eq!(ended["detail"]["error_type"], "Command.FAILED");
    assert_eq!(ended["detail"]["failed_step"], "Maybe");
    assert!(
        ended["detail"]["failure_reason"]
            .as_str()
            .unwrap()
            .contains("the command exited with code 4"),
        "{ended}"
    );
    app.stop().await;
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("a log line in time")
        .unwrap()
}

/// Every event of an ended execution, read from its event stream.
async fn events_of(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app
        .client
        .get(format!("{}/v1/executions/{id}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("the stream of an ended execution ends")
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

#[sqlx::test]
async fn an_unknown_stepwise_variable_warns_and_the_server_starts(db: PgPool) {
    let url = database_url(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let server = StepwiseProcess::serve(
        &url,
        dir.path(),
        &[
            ("STEPWISE_URL", "http://127.0.0.1:1"),
            ("STEPWISE_TOKEN", "sw_a_client_token_0123456789abcdef"),
            ("STEPWISE_WORKER__LEASE_SECONS", "5"),
        ],
    )
    .await;
    let health = reqwest::get(format!("{}/healthz", server.base_url.as_ref().unwrap()))
        .await
        .unwrap();
    assert!(
        health.status().is_success() || health.status() == 401,
        "{}",
        health.status()
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("STEPWISE_WORKER__LEASE_SECONS is not a stepwise setting and is ignored; did you mean STEPWISE_WORKER__LEASE_SECONDS?"),
        "{log}"
    );
    assert!(
        !log.contains("STEPWISE_URL") && !log.contains("STEPWISE_TOKEN"),
        "{log}"
    );
}

#[sqlx::test]
async fn stop_retry_and_logs_from_the_cli(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let shell = format!("echo holding; read word < {}; echo \"got $word\"", fifo.display());
    app.create_pipeline(
        "hold",
        definition_with(json!([]), json!([shell_step("Hold", &shell, &[])])),
    )
    .await;
    let mut follow = cli(&app, &["run", "hold", "--wait", "--logs"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = follow.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let arn = next_line(&mut lines).await.unwrap();
    let arn = arn
        .strip_prefix("started ")
        .expect("the first line names the execution")
        .to_string();
    // The log line arrives while the step still runs (it waits on the fifo).
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "  Hold | holding") {
        seen.push(
            next_line(&mut lines)
                .await
                .unwrap_or_else(|| panic!("run ended early: {seen:?}")),
        );
    }
    let stopped = run(cli(&app, &["executions", "stop", &arn, "--wait"])).await;
    assert_eq!(stopped.code, 0, "{}\n{}", stopped.stdout, stopped.stderr);
    assert!(stopped.stdout.starts_with("execution Stopped"), "{}", stopped.stdout);
    let mut rest = Vec::new();
    while let Some(line) = next_line(&mut lines).await {
        rest.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("Hold: stopped: Step.STOPPED")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l == "execution Stopped"), "{rest:?}");
    // Retry in place; the step runs again and this time gets its word.
    let mut retry = cli(&app, &["executions", "retry", &arn, "--wait"]);
    retry.stdout(Stdio::piped()).stderr(Stdio::piped());
    let retry = retry.spawn().unwrap();
    let writer = tokio::task::spawn_blocking(move || std::fs::write(&fifo, "again\n"));
    let output = tokio::time::timeout(Duration::from_secs(120), retry.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let latest = run(cli(&app, &["logs", &arn, "Hold"])).await;
    assert_eq!(latest.stdout, "holding\ngot again\n");
    let first = run(cli(&app, &["logs", &arn, "Hold", "--attempt", "1"])).await;
    assert_eq!(first.stdout, "holding\n");
    let missing = run(cli(&app, &["logs", &arn, "Nope"])).await;
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    app.stop().await;
}

#[sqlx::test]
async fn a_log_follow_request_is_bounded_and_resumes_from_an_offset(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.api.max_wait_seconds = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let shell = format!("echo one; read word < {}; echo \"two $word\"", fifo.display());
    app.create_pipeline(
        "bounded",
        definition_with(json!([]), json!([shell_step("Wait", &shell, &[])])),
    )
    .await;
    let id = app.start("bounded", json!({})).await;
    let logs = format!("/v1/executions/{id}/steps/Wait/logs");
    // The running step's first line reaches the database (and any API process).
    crate::helpers::wait_until(Duration::from_secs(60), || async {
        (app.get(&logs).await.text == "one\n").then_some(())
    })
    .await
    .expect("the running step's log reached the API");
    // A follow request ends after api.max_wait_seconds while the step runs on.
    let first = app.get(&format!("{logs}?follow=true")).await;
    assert_eq!((first.status, first.text.as_str()), (200, "one\n"));
    assert_eq!(app.step(&id, "Wait").await["status"], "Executing");
    // The next one goes on from what was received, and ends with the step.
    let writer = tokio::task::spawn_blocking(move || std::fs::write(&fifo, "go\n"));
    let mut rounds = 0;
    let rest = loop {
        rounds += 1;
        assert!(rounds <= 30, "the rest of the log never came");
        let rest = app.get(&format!("{logs}?follow=true&attempt=1&offset=4")).await;
        assert_eq!(rest.status, 200);
        if !rest.text.is_empty() {
            break rest;
        }
    };
    writer.await.unwrap().unwrap();
    assert_eq!(rest.text, "two go\n");
    app.wait_step(&id, "Wait", |s| s["status"] == "Succeeded").await;
    // Reconnecting after the end reads nothing more, at once.
    assert_eq!(
        app.get(&format!("{logs}?follow=true&attempt=1&offset=11")).await.text,
        ""
    );
    let refused = app.get(&format!("{logs}?offset=4")).await;
    assert!(refused.expect_error(400, "ValidationError").contains("follow=true"));
    // The CLI's long polls fit a server whose api.max_wait_seconds is short.
    let waited = run(cli(&app, &["executions", "describe", &id, "--wait"])).await;
    assert_eq!(waited.code, 0, "{}\n{}", waited.stdout, waited.stderr);
    assert!(waited.stdout.contains("status:   Succeeded"), "{}", waited.stdout);
}

/// The `run:` lines of the README's CI job, as written (GitHub's
/// `${{ github.sha }}` replaced by `sha`), except the install.
fn readme_ci_job(sha: &str) -> Vec<String> {
    let readme = crate::markdown::read("README.md");
    let section = crate::markdown::section(&readme, "## Use from CI");
    let block = crate::markdown::blocks(&section)
        .into_iter()
        .find(|b| b.language() == "yaml")
        .expect("the CI section shows a job");
    let job: serde_yaml::Value = serde_yaml::from_str(&block.body).expect("the job is YAML");
    let steps = job["jobs"]["train"]["steps"].as_sequence().expect("the job has steps");
    let runs: Vec<String> = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .map(|r| r.replace("${{ github.sha }}", sha))
        .collect();
    assert_eq!(runs[0], "cargo install --locked --path stepwise", "{runs:?}");
    runs[1..].to_vec()
}

/// Runs the README's CI job in `dir` against `app`, with the built binary
/// on the PATH; the exit code of the first failing command (or 0) and the
/// output of all.
async fn run_ci_job(app: &TestApp, dir: &Path, sha: &str) -> (i32, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_stepwise")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut output = String::new();
    for line in readme_ci_job(sha) {
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", &line])
            .current_dir(dir)
            .env("PATH", &path)
            .env("STEPWISE_URL", &app.base)
            .env("STEPWISE_TOKEN", TEST_TOKEN)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let ran = run(command).await;
        output.push_str(&format!("$ {line}\n{}{}", ran.stdout, ran.stderr));
        if ran.code != 0 {
            return (ran.code, output);
        }
    }
    (0, output)
}

#[sqlx::test]
async fn the_ci_job_of_the_readme_runs_as_written(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |train: &str| {
        definition_with(
            json!([{"Name": "Commit", "Type": "String", "DefaultValue": "none"}]),
            json!([
                shell_step("Prepare", "echo prepared", &[]),
                {"Name": "Train", "Type": "Command", "DependsOn": ["Prepare"],
                 "Arguments": {"Shell": train, "Env": {"COMMIT": {"Get": "Parameters.Commit"}}}},
                shell_step("Report", "echo reported", &["Train"])
            ]),
        )
    };
    write_definition(dir.path(), "pipeline.json", &pipeline("echo \"training $COMMIT\""));
    let (code, output) = run_ci_job(&app, dir.path(), "c0ffee1").await;
    assert_eq!(code, 0, "{output}");
    for expected in [
        "pipeline train created",
        "every step runs",
        "Train | training c0ffee1",
        "execution Succeeded",
    ] {
        assert!(output.contains(expected), "{expected:?} in\n{output}");
    }
    // The next commit changes nothing in the pipeline: apply does nothing.
    let (code, output) = run_ci_job(&app, dir.path(), "c0ffee2").await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("pipeline train unchanged (version 1)"), "{output}");
    assert!(output.contains("Prepare: reused"), "{output}");
    assert!(output.contains("Train | training c0ffee2"), "{output}");
    // A commit that breaks training fails the job, with the reason.
    write_definition(
        dir.path(),
        "pipeline.json",
        &pipeline("echo \"diverged at $COMMIT\"; exit 1"),
    );
    let (code, output) = run_ci_job(&app, dir.path(), "c0ffee3").await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("pipeline train updated (version 2)"), "{output}");
    assert!(output.contains("Train | diverged at c0ffee3"), "{output}");
    assert!(
        output.contains("execution Failed: step \"Train\" failed: Command.FAILED: the command exited with code 1"),
        "{output}"
    );
    app.stop().await;
}

/// Issue 20 item 5: the step list pages, and the CLI follows its pages:
/// `executions describe` shows every step of a wide execution.
#[sqlx::test]
async fn describe_shows_every_step_of_a_wide_execution(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let steps: Vec<Value> = (0..230)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Pass", "Arguments": {}}))
        .collect();
    app.create_pipeline("wide", definition_with(json!([]), json!(steps)))
        .await;
    let id = app.start("wide", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let described = run(cli(&app, &["executions", "describe", &id, "--output", "json"])).await;
    assert_eq!(described.code, 0, "{}", described.stderr);
    let described: Value = serde_json::from_str(&described.stdout).unwrap();
    let names: Vec<&str> = described["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_name"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..230).map(|i| format!("S{i:03}")).collect();
    assert_eq!(names, expected);
    let text = run(cli(&app, &["executions", "describe", &id])).await;
    assert_eq!(
        text.stdout.lines().filter(|l| l.contains("S2")).count(),
        30,
        "{}",
        text.stdout
    );
    app.stop().await;
}
