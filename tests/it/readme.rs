//! The README, tried as a new user tries it: every `sh` block of its
//! "Walk-through with curl" section, in order, in one bash session with
//! `set -euo pipefail`, against a real `stepwise serve` whose data
//! directory is `./data` of the shell's working directory (as with
//! `cargo run`), so `TOKEN=$(cat data/admin.token)` reads the test's token.
//! And the server's text log, written to a pipe, carries no colour codes.

use std::{process::Stdio, time::Duration};

use sqlx::PgPool;

use crate::{
    helpers::TEST_TOKEN,
    markdown,
    procs::{database_url, StepwiseProcess},
};

const WALK_THROUGH: &str = "## Walk-through with curl";

/// The walk-through as one bash script: each block announced on stderr
/// with its README line, so a failure says which snippet broke.
fn walk_through_script() -> String {
    let readme = markdown::read("README.md");
    let blocks: Vec<_> = markdown::blocks(&markdown::section(&readme, WALK_THROUGH))
        .into_iter()
        .filter(|b| b.language() == "sh")
        .collect();
    assert!(blocks.len() >= 8, "the walk-through has its sh blocks: {blocks:?}");
    let mut script = String::from("set -euo pipefail\n");
    for block in blocks {
        script.push_str(&format!("echo '>>> README.md line {}' >&2\n", block.line));
        script.push_str(&block.body);
        script.push('\n');
    }
    script
}

#[sqlx::test]
async fn walk_through_runs_as_written(db: PgPool) {
    let url = database_url(&db).await;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = StepwiseProcess::serve_as_users_do(&url, &data).await;
    // What the first start writes when no admin token is configured.
    let token_file = data.join("admin.token");
    std::fs::write(&token_file, format!("{TEST_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let script = walk_through_script();
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(home.path())
        .env("API", server.base_url.as_deref().unwrap())
        .env("TMPDIR", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash starts");
    // Every wait in the walk-through is a long poll of at most 60 s.
    let output = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("the walk-through ends in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let server_log = server.log.lock().unwrap().join("\n");
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{server_log}");
    assert!(
        output.status.success(),
        "the walk-through failed: {}\n{context}",
        output.status
    );

    // What the README's comments say the snippets print.
    for expected in [
        // the cache hit, and a miss explained
        "hit {'source_execution_arn': 'arn:stepwise:pipelines:local:000000000000:pipeline/demo/execution/",
        "Env.EPOCHS: 10 -> 12",
        // the selective run
        "Prepare Succeeded None reused\nTrain Succeeded None -\nReport Skipped NotSelected -\n",
        // the failed run, its log, and its retry
        "Failed - step \"Load\" failed: Command.FAILED: the command exited with code 3\n",
        "/input.csv is missing\n",
        "Succeeded\nFetch Succeeded attempts: 1\nLoad Succeeded attempts: 2\n",
        // "changed" catches an edited code file, and early cut-off saves a step
        "Featurize Reuse []\nTrain Run ['CacheInputs train.sh: content changed']\n\
         Evaluate RunUnlessUnchanged ['downstream of Train']\n",
        "{'Outputs': {'score': 0.84}}\n",
        "Featurize Succeeded ran\nTrain Succeeded inputs unchanged after upstream re-ran\n\
         Evaluate Succeeded inputs unchanged after upstream re-ran\n",
        // a ForEach with one broken item: fixed, only that item runs again
        "Failed - step \"FanOut[7].Score\" failed: Command.FAILED: the command exited with code 3\n",
        "FanOut Run reuse 9 run 1 [7]\n",
        "Succeeded\nran: ['FanOut[7].Score'] reused: 9\n10 {'score': 81}\n",
    ] {
        assert!(
            stdout.contains(expected),
            "the walk-through did not print {expected:?}\n{context}"
        );
    }
    // The stop of an ended run was refused.
    assert!(stdout.contains("\"code\":\"Conflict\""), "{context}");
    // Every run the walk-through started has ended, none is left failed.
    let client = crate::helpers::authed_client(Duration::from_secs(30));
    for pipeline in ["demo", "ingest", "model"] {
        let list: serde_json::Value = client
            .get(format!(
                "{}/v1/pipelines/{pipeline}/executions",
                server.base_url.as_deref().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let statuses: Vec<_> = list["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap().to_string())
            .collect();
        assert!(!statuses.is_empty(), "{pipeline} has executions");
        assert!(
            statuses.iter().all(|s| s == "Succeeded"),
            "{pipeline}: {statuses:?}\n{context}"
        );
    }
}

#[sqlx::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes(db: PgPool) {
    let url = database_url(&db).await;
    let data = tempfile::tempdir().unwrap();
    // stderr is a pipe here, as when a log is written to a file; no NO_COLOR.
    let server = StepwiseProcess::serve_as_users_do(&url, data.path()).await;
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.contains("stepwise API listening")),
        "the server logged its start: {log:?}"
    );
    let coloured: Vec<_> = log.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(coloured.is_empty(), "log lines with escape codes: {coloured:?}");
}
