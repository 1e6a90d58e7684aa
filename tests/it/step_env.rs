//! What a step can see: never the service's own configuration (database
//! URL, passwords, tokens), neither in its environment nor in the step
//! supervisor's; and with `worker.run_as_user`, neither the service's files
//! nor `/proc/<server>/environ`.

use std::{os::unix::fs::PermissionsExt, time::Duration};

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    helpers::{client_with_token, definition_with, TEST_TOKEN},
    procs::{database_url, StepwiseProcess},
};

/// Creates a pipeline of one Command step running `shell`, runs it to its
/// end and returns the step.
async fn run_shell(base: &str, token: &str, shell: &str) -> Value {
    let client = client_with_token(token, Duration::from_secs(120));
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Look", "Type": "Command", "Arguments": {"Shell": shell, "TimeoutSeconds": 60}}]),
    );
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "look", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started: Value = client
        .post(format!("{base}/v1/pipelines/look/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["execution_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let execution: Value = client
            .get(format!("{base}/v1/executions/{id}?wait_seconds=20"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(execution["status"].as_str(), Some("Succeeded" | "Failed" | "Stopped")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the execution did not end: {execution}"
        );
    }
    client
        .get(format!("{base}/v1/executions/{id}/steps/Look"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn secret(n: u32) -> String {
    format!("zzsecret{n}x{}", Uuid::new_v4().simple())
}

#[sqlx::test]
async fn a_step_sees_none_of_the_services_configuration(db: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let dump = tempfile::tempdir().unwrap();
    let (s1, s2, s3, s4) = (secret(1), secret(2), secret(3), secret(4));
    // PostgreSQL trusts the test connections: the passwords are not checked.
    let base_url = database_url(&db).await;
    let url = base_url.replacen("postgres@", &format!("postgres:{s1}@"), 1);
    let plain = format!("postgres://other:{s2}@127.0.0.1:1/none");
    let filter = format!("info,{s4}=info");
    let token = secret(6);
    let env = [
        ("STEPWISE_AUTH__ADMIN_TOKEN", token.as_str()),
        ("DATABASE_URL", plain.as_str()),
        ("PGPASSWORD", s3.as_str()),
        ("STEPWISE_LOG__FILTER", filter.as_str()),
    ];
    let server = StepwiseProcess::serve(&url, data.path(), &env).await;
    let file = dump.path().join("env.txt");
    // Its own environment, as the shell and the kernel see it, and that of
    // its parent (the step supervisor), which runs as the same user.
    let shell = format!(
        "{{ env; tr '\\0' '\\n' < /proc/self/environ; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; \
         echo parent-read=$?; }} > {} 2>&1",
        file.display()
    );
    let step = run_shell(server.base_url.as_deref().unwrap(), &token, &shell).await;
    assert_eq!(step["status"], "Succeeded", "{step}");
    let seen = std::fs::read_to_string(&file).unwrap();
    assert!(seen.contains("STEPWISE_STEP_NAME=Look"), "{seen}");
    assert!(seen.contains("parent-read=0"), "{seen}");
    for (what, value) in [
        ("the database URL's password", &s1),
        ("DATABASE_URL", &s2),
        ("PGPASSWORD", &s3),
        ("a STEPWISE_ setting", &s4),
        ("the admin token", &token),
    ] {
        assert!(!seen.contains(value.as_str()), "{what} reached the step:\n{seen}");
    }
    for name in [
        "STEPWISE_DATABASE_URL",
        "DATABASE_URL=",
        "PGPASSWORD",
        "STEPWISE_LOG__FILTER",
        "STEPWISE_DATA_DIR",
    ] {
        assert!(!seen.contains(name), "{name} reached the step:\n{seen}");
    }
}

#[sqlx::test]
async fn steps_run_as_another_user_that_cannot_read_the_service(db: PgPool) {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a nobody user");
    let data = tempfile::tempdir().unwrap();
    // The step user must be able to reach its directories under it.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = data.path().join("private.txt");
    std::fs::write(&private, secret(5)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = database_url(&db).await;
    let env = [("STEPWISE_WORKER__RUN_AS_USER", "nobody")];
    let server = StepwiseProcess::serve(&url, data.path(), &env).await;
    let pid = server.child.id().unwrap();
    let shell = format!(
        "file=denied; cat {} >/dev/null 2>&1 && file=read; \
         environ=denied; cat /proc/{pid}/environ >/dev/null 2>&1 && environ=read; \
         echo made > \"$STEPWISE_ARTIFACTS/made.txt\"; echo scratch > scratch.txt; \
         echo \"{{\\\"uid\\\": \\\"$(id -u)\\\", \\\"gid\\\": \\\"$(id -g)\\\", \\\"groups\\\": \\\"$(id -G)\\\", \
         \\\"file\\\": \\\"$file\\\", \\\"environ\\\": \\\"$environ\\\"}}\" > \"$STEPWISE_OUTPUTS\"",
        private.display()
    );
    let step = run_shell(server.base_url.as_deref().unwrap(), TEST_TOKEN, &shell).await;
    assert_eq!(step["status"], "Succeeded", "{step}");
    let outputs = &step["properties"]["Outputs"];
    assert_eq!(outputs["uid"], nobody.uid.to_string(), "{outputs}");
    assert_eq!(outputs["gid"], nobody.gid.to_string(), "{outputs}");
    assert_eq!(
        outputs["groups"],
        nobody.gid.to_string(),
        "no supplementary groups: {outputs}"
    );
    assert_eq!(outputs["file"], "denied", "{outputs}");
    assert_eq!(outputs["environ"], "denied", "{outputs}");
    let artifacts = step["properties"]["ArtifactsUri"].as_str().unwrap();
    let made = std::path::Path::new(artifacts.trim_start_matches("file://")).join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
}

#[tokio::test]
async fn an_unknown_step_user_fails_the_start_clearly() {
    let data = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .arg("worker")
        .env_remove("STEPWISE_TEST_WORKER_LOGS")
        .env("STEPWISE_DATA_DIR", data.path())
        // Nothing listens there: the check must come before connecting.
        .env("STEPWISE_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("STEPWISE_WORKER__RUN_AS_USER", "no-such-stepwise-user")
        .env("STEPWISE_DATABASE__CONNECT_RETRY_SECONDS", "1")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the worker exits in time")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker.run_as_user") && stderr.contains("no-such-stepwise-user"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_supervisor_that_cannot_switch_users_says_so() {
    use std::os::unix::process::CommandExt;
    let check = |as_nobody: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command.args(["supervise", "check-run-as-user"]).env_clear();
        if as_nobody {
            // An unprivileged user without file capabilities.
            command.uid(65534).gid(65534);
        }
        command.output().expect("the supervisor check runs")
    };
    // The tests run as root, which holds CAP_SETUID and CAP_SETGID.
    assert!(check(false).status.success());
    let refused = check(true);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("CAP_SETUID") && said.contains("worker.run_as_user"),
        "{said}"
    );
}

#[sqlx::test]
async fn a_property_file_linked_outside_the_artifacts_is_not_read_for_the_step(db: PgPool) {
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A JSON file only the service's user may read (cloud credentials, say).
    let private = data.path().join("private.json");
    let value = secret(6);
    std::fs::write(&private, json!({"cred": value}).to_string()).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = database_url(&db).await;
    let env = [("STEPWISE_WORKER__RUN_AS_USER", "nobody")];
    let server = StepwiseProcess::serve(&url, data.path(), &env).await;
    let base = server.base_url.clone().unwrap();
    let client = client_with_token(TEST_TOKEN, Duration::from_secs(120));
    // The step cannot read the file, but leaves a link to it as its
    // property file; the next step reads the property file.
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Plant", "Type": "Command",
             "Arguments": {"Shell": format!("ln -s {} \"$STEPWISE_ARTIFACTS/report.json\"", private.display())},
             "PropertyFiles": [{"PropertyFileName": "Report", "FilePath": "report.json"}]},
            {"Name": "Read", "Type": "Pass",
             "Arguments": {"stolen": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Plant.PropertyFiles.Report"}, "Path": "cred"}}}}
        ]),
    );
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "plant", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started: Value = client
        .post(format!("{base}/v1/pipelines/plant/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["execution_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let execution = loop {
        let execution: Value = client
            .get(format!("{base}/v1/executions/{id}?wait_seconds=20"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(execution["status"].as_str(), Some("Succeeded" | "Failed" | "Stopped")) {
            break execution;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the execution did not end: {execution}"
        );
    };
    let steps = client
        .get(format!("{base}/v1/executions/{id}/steps"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!steps.contains(&value), "the private file reached the steps: {steps}");
    assert_eq!(execution["status"], "Failed", "{execution}");
    let reason = execution["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("outside the step's artifacts directory"), "{reason}");
}
