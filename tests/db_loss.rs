//! PostgreSQL restarted under a running `stepwise serve` process: `/readyz`
//! turns 503 while the database is down and 200 after, the service
//! reconnects by itself and the execution in flight finishes Succeeded.
//!
//! Restarting the server breaks every other test running at the time, so
//! this is its own test binary with one ignored test; `.ci/run` runs it
//! alone: `cargo test --locked --test db_loss -- --ignored --test-threads=1`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

fn cluster_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the clusters")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    versions.sort();
    versions.into_iter().next().expect("a PostgreSQL cluster")
}

fn pg_ctlcluster(action: &str) -> std::process::Output {
    let mut command = Command::new("pg_ctlcluster");
    command
        .args(["--skip-systemctl-redirect", &cluster_version(), "main", action])
        .stdin(Stdio::null());
    if action == "stop" {
        command.args(["-m", "fast"]);
    }
    command.output().expect("pg_ctlcluster runs")
}

fn pg_is_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts PostgreSQL again when dropped, so a failing test never leaves the
/// machine without its database.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if !pg_is_ready() {
            let out = pg_ctlcluster("start");
            eprintln!("restart guard: pg_ctlcluster start: {out:?}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pg_is_ready() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Drops the test's database when dropped (after PostgreSQL is back).
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        if pg_is_ready() {
            psql(&format!("drop database if exists {} with (force)", self.0));
        }
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql])
        .output()
        .expect("psql runs");
    if !out.status.success() {
        eprintln!("psql {sql}: {out:?}");
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request is sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until it answers `status`; returns every other answer seen.
    async fn wait_for_status(&self, path: &str, status: u16, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            match self.get(path).await {
                Ok((s, _)) if s == status => return seen,
                Ok((s, body)) => seen.push(format!("{s} {body}")),
                Err(e) => seen.push(format!("transport error: {e}")),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never answered {status}; saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
#[ignore = "restarts PostgreSQL; run alone by .ci/run"]
async fn the_service_survives_a_database_restart_mid_execution() {
    assert!(pg_is_ready(), "PostgreSQL must be running before the test");
    let db_name = format!("stepwise_dbloss_{}", uuid::Uuid::new_v4().simple());
    // Dropped in reverse order: PostgreSQL is started again, then the
    // database is dropped.
    let _database = DropDatabase(db_name.clone());
    let _restart = RestartGuard;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let data_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env(
            "STEPWISE_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db_name}"),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "stepwise=info".into()),
        )
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .spawn()
        .expect("the stepwise binary starts");
    let server = Server {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    server.wait_for_status("/healthz", 200, Duration::from_secs(60)).await;
    server.wait_for_status("/readyz", 200, Duration::from_secs(60)).await;

    // Three Command steps; the middle one runs across the restart.
    let d = marks.path().display();
    let definition = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Before", "Type": "Command", "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/Before; echo '{{\"n\": 1}}' > \"$STEPWISE_OUTPUTS\"")}},
        {"Name": "During", "Type": "Command", "DependsOn": ["Before"], "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/During; touch {d}/during-started; sleep 3")}},
        {"Name": "After", "Type": "Command", "DependsOn": ["During"], "Arguments": {"Shell": format!(
            "echo \"$STEPWISE_ATTEMPT\" >> {d}/After")}}
    ]});
    let (status, body) = server
        .post("/v1/pipelines", &json!({"name": "dbloss", "definition": definition}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post("/v1/pipelines/dbloss/executions", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["execution_id"].as_str().unwrap().to_string();

    // Wait until the middle step runs, then stop PostgreSQL under it.
    let started = marks.path().join("during-started");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the middle step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = pg_ctlcluster("stop");
    assert!(out.status.success(), "pg_ctlcluster stop: {out:?}");

    // While the database is down: not ready, still alive.
    server.wait_for_status("/readyz", 503, Duration::from_secs(60)).await;
    let (status, body) = server.get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, _) = server.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "healthz does not depend on the database");
    // What describe answers while the database is down (reported, and held
    // to the one error shape and a 5xx that is not a crash).
    let (down_status, down_body) = server.get(&format!("/v1/executions/{id}")).await.unwrap();
    eprintln!("describe while the database is down: {down_status} {down_body}");
    assert!((500..600).contains(&down_status), "{down_status} {down_body}");
    assert!(down_body["error"]["code"].is_string(), "{down_body}");

    let out = pg_ctlcluster("start");
    assert!(out.status.success(), "pg_ctlcluster start: {out:?}");
    server.wait_for_status("/readyz", 200, Duration::from_secs(120)).await;

    // The service reconnects by itself and the execution finishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let execution = loop {
        match server.get(&format!("/v1/executions/{id}?wait_seconds=10")).await {
            Ok((200, body)) if body["status"] != "Executing" => break body,
            Ok((200, _)) => {}
            other => eprintln!("describe after the restart: {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the execution never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let (status, before) = server.get(&format!("/v1/executions/{id}/steps/Before")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(before["properties"]["Outputs"], json!({"n": 1}), "{before}");
    assert_eq!(before["attempt_count"], 1, "{before}");
    let runs = |step: &str| {
        std::fs::read_to_string(marks.path().join(step))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(runs("Before"), 1);
    assert!(runs("During") >= 1, "at-least-once");
    assert_eq!(runs("After"), 1);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Checked last so that the recovery above is proven either way.
    assert_eq!(
        down_status, 503,
        "a down database is Unavailable (503), not an internal error: {down_body}"
    );
}
