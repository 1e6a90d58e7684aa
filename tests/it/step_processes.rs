//! What a Command step leaves behind and what it may produce (issue 9:
//! defects 4, 5, 6, 12 and 13), with real processes: no process of a step
//! outlives its attempt (success, stop, timeout, a killed worker), the log
//! kept per attempt is bounded and byte-exact, outputs the database cannot
//! hold fail the step at once, a missing program is the step's own failure,
//! and hashing `CacheInputs` never freezes the server.

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    helpers::{definition_with, wait_until, TestApp},
    procs::{database_url, StepwiseProcess},
};

/// Whether `pid` is a live process (a zombie counts as gone: it runs nothing).
fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids a step wrote to `file`, one a line, once it holds `count`.
async fn pids_in(file: &Path, count: usize) -> Vec<i32> {
    wait_until(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(file).ok()?;
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (text.ends_with('\n') && pids.len() >= count).then_some(pids)
    })
    .await
    .unwrap_or_else(|| panic!("the step never wrote {count} pids to {}", file.display()))
}

/// Waits until none of `pids` runs any more.
async fn assert_all_gone(pids: &[i32], when: &str) {
    let gone = wait_until(Duration::from_secs(30), || async {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    })
    .await;
    let left: Vec<&i32> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(gone.is_some(), "processes {left:?} of the step outlived it {when}");
}

/// A child that ignores SIGTERM (the disposition survives `exec`) beside
/// a leader that does not; both pids go to `pids`, the child's first.
fn stubborn_script(pids: &Path) -> String {
    format!(
        "(trap '' TERM; exec sleep 1000) & echo $! > {p}; echo $$ >> {p}; wait",
        p = pids.display()
    )
}

/// The log endpoint's body as raw bytes (None before the step has started).
async fn try_raw_log(app: &TestApp, id: &str, step: &str) -> Option<Vec<u8>> {
    let url = format!("{}/v1/executions/{id}/steps/{step}/logs", app.base);
    let response = app.client.get(url).send().await.unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    Some(response.bytes().await.unwrap().to_vec())
}

async fn raw_log(app: &TestApp, id: &str, step: &str) -> Vec<u8> {
    try_raw_log(app, id, step).await.expect("the step has a log")
}

#[sqlx::test]
async fn a_background_child_does_not_outlive_a_successful_step(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 1000 & echo $! > {}", pids.display());
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Spawner", "Type": "Command", "Arguments": {"Shell": script}}]),
    );
    app.create_pipeline("background", definition).await;
    let id = app.start("background", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let pids = pids_in(&pids, 1).await;
    assert_all_gone(&pids, "after it succeeded").await;
}

#[sqlx::test]
async fn a_child_ignoring_sigterm_is_gone_after_stop(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.kill_grace_seconds = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Stubborn", "Type": "Command", "Arguments": {"Shell": stubborn_script(&pids)}}]),
    );
    app.create_pipeline("stubborn", definition).await;
    let id = app.start("stubborn", json!({})).await;
    let pids = pids_in(&pids, 2).await;
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Stopped");
    assert_all_gone(&pids, "after a stop").await;
}

#[sqlx::test]
async fn a_child_ignoring_sigterm_is_gone_after_a_timeout(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.kill_grace_seconds = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Stubborn", "Type": "Command",
                "Arguments": {"Shell": stubborn_script(&pids), "TimeoutSeconds": 2}}]),
    );
    app.create_pipeline("stubborn", definition).await;
    let id = app.start("stubborn", json!({})).await;
    let pids = pids_in(&pids, 2).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    assert_eq!(app.step(&id, "Stubborn").await["error_type"], "Command.TIMEOUT");
    assert_all_gone(&pids, "after a timeout").await;
}

#[sqlx::test]
async fn the_processes_of_a_killed_worker_die_with_it(db: PgPool) {
    // The app only serves the API; the step runs in a worker process.
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Orphaned", "Type": "Command", "Arguments": {"Shell": stubborn_script(&pids)}}]),
    );
    app.create_pipeline("orphaned", definition).await;
    let url = database_url(&app.db).await;
    let mut worker = StepwiseProcess::start(
        &url,
        app.data_dir.path(),
        &[("STEPWISE_WORKER__KILL_GRACE_SECONDS", "1")],
    )
    .await;
    app.start("orphaned", json!({})).await;
    let pids = pids_in(&pids, 2).await;
    worker.kill().await; // SIGKILL: the worker cannot clean up
    assert_all_gone(&pids, "after its worker was killed").await;
}

#[sqlx::test]
async fn nul_bytes_and_invalid_utf8_in_the_log_survive(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Binary", "Type": "Command",
                "Arguments": {"Shell": r"printf 'a\000b\377\376c\n'; printf 'err\000\n' >&2"}}]),
    );
    app.create_pipeline("binary", definition).await;
    let id = app.start("binary", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    assert_eq!(raw_log(&app, &id, "Binary").await, b"a\0b\xff\xfec\nerr\0\n");
}

#[sqlx::test]
async fn a_nul_in_outputs_fails_the_step_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "InValue", "Type": "Command",
             "Arguments": {"Shell": r#"printf '%s' '{"x": "a\u0000b"}' > "$STEPWISE_OUTPUTS""#}},
            {"Name": "InKey", "Type": "Command",
             "Arguments": {"Shell": r#"printf '%s' '{"k\u0000": 1}' > "$STEPWISE_OUTPUTS""#}}
        ]),
    );
    app.create_pipeline("nul", definition).await;
    let id = app.start("nul", json!({})).await;
    let execution = tokio::time::timeout(Duration::from_secs(60), app.wait_terminal(&id))
        .await
        .expect("the step failed promptly");
    assert_eq!(execution["status"], "Failed");
    for name in ["InValue", "InKey"] {
        let step = app.step(&id, name).await;
        assert_eq!(step["status"], "Failed", "{step}");
        assert_eq!(step["error_type"], "Command.FAILED", "{step}");
        assert_eq!(step["attempt_count"], 1, "{step}");
        let reason = step["failure_reason"].as_str().unwrap();
        assert!(
            reason.contains("NUL character") && reason.contains("STEPWISE_OUTPUTS"),
            "{reason}"
        );
    }
}

#[sqlx::test]
async fn a_program_that_cannot_be_run_is_the_steps_own_failure(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Missing", "Type": "Command", "Arguments": {"Command": ["stepwise-no-such-program", "x"]}},
            {"Name": "Denied", "Type": "Command", "Arguments": {"Command": [not_executable.to_str().unwrap()]}}
        ]),
    );
    app.create_pipeline("cannot-run", definition).await;
    let id = app.start("cannot-run", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let expected = [
        ("Missing", "program not found: stepwise-no-such-program".to_string()),
        (
            "Denied",
            format!("permission denied: cannot execute {}", not_executable.display()),
        ),
    ];
    for (name, message) in expected {
        let step = app.step(&id, name).await;
        assert_eq!(step["error_type"], "Command.FAILED", "{step}");
        assert_eq!(step["attempt_count"], 1, "{step}");
        assert_eq!(step["failure_reason"], Value::String(message), "{step}");
    }
}

#[sqlx::test]
async fn the_log_kept_per_attempt_is_bounded_to_head_and_tail(db: PgPool) {
    const BOUND: usize = 64 * 1024;
    let app = TestApp::spawn_with(db, |c| c.worker.max_log_bytes = BOUND as u64).await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    // Prints ~1.3 MB, then waits so the live log can be read mid-run.
    let script = format!(
        "seq 1 200000; echo waiting; while [ ! -e {r} ]; do sleep 0.05; done; echo the end",
        r = release.display()
    );
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Chatty", "Type": "Command", "Arguments": {"Shell": script}}]),
    );
    app.create_pipeline("chatty", definition).await;
    let id = app.start("chatty", json!({})).await;
    let file = app.data_dir.path().join(format!("runs/{id}/Chatty/attempt-1/log.txt"));
    let live = wait_until(Duration::from_secs(60), || async {
        let log = try_raw_log(&app, &id, "Chatty").await?;
        log.ends_with(b"200000\nwaiting\n").then_some(log)
    })
    .await
    .expect("the live log shows the latest output while the step runs");
    assert!(live.len() <= BOUND, "live log of {} bytes", live.len());
    assert!(std::fs::metadata(&file).unwrap().len() as usize <= BOUND);
    std::fs::write(&release, "").unwrap();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");

    let on_disk = std::fs::read(&file).unwrap();
    let stored = raw_log(&app, &id, "Chatty").await;
    for log in [&on_disk, &stored] {
        assert!(log.len() <= BOUND, "a log of {} bytes", log.len());
        assert!(log.starts_with(b"1\n2\n3\n4\n5\n"));
        assert!(log.ends_with(b"199999\n200000\nwaiting\nthe end\n"));
        let text = String::from_utf8_lossy(log);
        let marker = text.find("\n[... ").expect("a marker between head and tail");
        assert!(
            text[marker..].contains(" bytes omitted ...]\n"),
            "{}",
            &text[marker..marker + 60]
        );
    }
    assert_eq!(on_disk, stored);
}

#[sqlx::test]
async fn hashing_a_device_or_a_fifo_fails_the_step_while_the_api_answers(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let cached = |inputs: Value| json!({"Shell": "true", "CacheInputs": inputs});
    let cache = json!({"Enabled": true, "ExpireAfter": "P1D"});
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Zero1", "Type": "Command", "Arguments": cached(json!(["/dev/zero"])), "CacheConfig": cache},
            {"Name": "Zero2", "Type": "Command", "Arguments": cached(json!(["/dev/zero"])), "CacheConfig": cache},
            {"Name": "Fifo", "Type": "Command", "Arguments": cached(json!([fifo.to_str().unwrap()])), "CacheConfig": cache},
            // Relative to WorkingDirectory, never to the server's directory.
            {"Name": "Relative", "Type": "Command", "Arguments": cached(json!(["Cargo.toml"])), "CacheConfig": cache}
        ]),
    );
    app.create_pipeline("devices", definition).await;
    // A separate server process runs the steps, so a frozen runtime shows
    // as its API not answering rather than as this test hanging.
    let url = database_url(&app.db).await;
    let server = StepwiseProcess::serve(&url, app.data_dir.path(), &[]).await;
    let base = server.base_url.clone().unwrap();
    let client = crate::helpers::authed_client(Duration::from_secs(10));
    let id = app.start("devices", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let execution = loop {
        assert!(tokio::time::Instant::now() < deadline, "the execution never ended");
        let health = client.get(format!("{base}/healthz")).send().await;
        assert!(
            health.is_ok_and(|r| r.status().is_success()),
            "the server stopped answering while steps hashed their inputs"
        );
        let execution = client
            .get(format!("{base}/v1/executions/{id}?wait_seconds=1"))
            .send()
            .await
            .expect("the server answers")
            .json::<Value>()
            .await
            .unwrap();
        if execution["status"] != "Executing" {
            break execution;
        }
    };
    assert_eq!(execution["status"], "Failed", "{execution}");
    for (name, what) in [
        ("Zero1", "/dev/zero is a character device"),
        ("Zero2", "/dev/zero is a character device"),
        ("Fifo", "is a FIFO"),
    ] {
        let step = app.step(&id, name).await;
        assert_eq!(step["error_type"], "Step.INPUT_ERROR", "{step}");
        assert_eq!(step["attempt_count"], 1, "{step}");
        let reason = step["failure_reason"].as_str().unwrap();
        assert!(
            reason.contains(what) && reason.contains("only regular files and directories"),
            "{reason}"
        );
    }
    // The server runs in the crate's directory, where Cargo.toml exists: a
    // relative input must still not be read from there.
    let step = app.step(&id, "Relative").await;
    assert_eq!(step["error_type"], "Step.INPUT_ERROR", "{step}");
    let reason = step["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("\"Cargo.toml\" is relative and the step has no WorkingDirectory"),
        "{reason}"
    );
}
