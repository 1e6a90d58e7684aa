//! Database connections per process: `database.max_connections` is the real
//! cap whatever the worker concurrency (reports wait for a connection rather
//! than fail), and when no connection can be had, the error names why: this
//! process's connections are all busy, the server refuses more clients, or
//! the server cannot be reached. None of them is a bare "pool timed out".

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};
use stepwise::{app::App, config::Config};
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::definition_with,
    procs::{database_url, StepwiseProcess},
};

/// The connections of the server tagged `name` open right now.
async fn connections_of(db: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_stat_activity where application_name = $1")
        .bind(name)
        .fetch_one(db)
        .await
        .unwrap()
}

/// A fan-out of 200 Pass steps reported by 32 worker tasks, on a process
/// allowed 4 connections: it never holds more, and every step succeeds.
#[sqlx::test]
async fn max_connections_is_the_cap_whatever_the_concurrency(db: PgPool) {
    let tag = "stepwise-capped";
    let url = format!("{}?application_name={tag}", database_url(&db).await);
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("STEPWISE_DATABASE__MAX_CONNECTIONS", "4"),
        ("STEPWISE_WORKER__CONCURRENCY", "32"),
    ];
    let server = StepwiseProcess::serve(&url, data.path(), &env).await;
    let base = server.base_url.clone().unwrap();
    let client = crate::helpers::authed_client(std::time::Duration::from_secs(120));
    let steps: Vec<Value> = (0..200)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Pass", "Arguments": {"i": i}}))
        .collect();
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "wide", "definition": definition_with(json!([]), Value::Array(steps))}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut most = 0;
    for _ in 0..3 {
        let resp = client
            .post(format!("{base}/v1/pipelines/wide/executions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let id = resp.json::<Value>().await.unwrap()["execution_id"]
            .as_str()
            .unwrap()
            .to_string();
        let status = loop {
            most = most.max(connections_of(&db, tag).await);
            let resp = client
                .get(format!("{base}/v1/executions/{id}?wait_seconds=0"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            if body["status"] != "Executing" {
                break body["status"].clone();
            }
        };
        assert_eq!(status, "Succeeded");
    }
    // A pool keeps what it opened, so the count now is its peak too.
    most = most.max(connections_of(&db, tag).await);
    eprintln!("at most {most} connections");
    assert!(
        most <= 4,
        "the process opened {most} connections with database.max_connections = 4"
    );
}

/// The app over `pool` (connections opened lazily), on a free port, without
/// workers; returns its base URL and a token that stops it.
async fn spawn_over(
    pool: PgPool,
    data_dir: &std::path::Path,
) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data_dir.to_path_buf();
    config.worker.concurrency = 0;
    // These tests are about the database's answers, not tokens (the token
    // lookup's own 503 is named the same way).
    config.auth.enabled = false;
    let app = App::build_with_pool(config, pool).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            app.run(stop).await.unwrap();
        }
    });
    (base, stop, handle)
}

/// GET /v1/pipelines, expected to be a 503; returns its message.
async fn unavailable_message(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/v1/pipelines")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unavailable", "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

fn lazy_pool(options: sqlx::postgres::PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(options)
}

/// Every connection of the process in use: the 503 says so.
#[sqlx::test]
async fn a_busy_pool_is_named_as_such(db: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let pool = lazy_pool(db.connect_options().as_ref().clone(), 2);
    let (base, stop, handle) = spawn_over(pool.clone(), data.path()).await;
    // Whatever the LISTEN connection has not taken, the test holds.
    let mut held = Vec::new();
    while pool.size() < 2 || pool.num_idle() > 0 {
        held.push(pool.acquire().await.unwrap());
    }
    let message = unavailable_message(&base).await;
    assert!(message.contains("all 2 database connections"), "{message}");
    drop(held);
    stop.cancel();
    handle.await.unwrap();
    pool.close().await;
}

/// A server that is not there: the 503 says it cannot be reached, and why.
#[sqlx::test]
async fn an_unreachable_database_is_named_as_such(db: PgPool) {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let options = db.connect_options().as_ref().clone().port(1);
    let pool = lazy_pool(options, 4);
    let (base, stop, handle) = spawn_over(pool.clone(), data.path()).await;
    let message = unavailable_message(&base).await;
    assert!(
        message.contains("not reachable") && message.contains("refused"),
        "{message}"
    );
    stop.cancel();
    handle.await.unwrap();
}

/// A server that refuses more clients (SQLSTATE 53300, here from a role's
/// connection limit): the 503 gives the server's reason.
#[sqlx::test]
async fn too_many_clients_is_named_as_such(db: PgPool) {
    let role = format!("stepwise_limited_{}", uuid::Uuid::new_v4().simple());
    for statement in [
        format!("create role {role} login connection limit 1"),
        format!("grant select on all tables in schema public to {role}"),
    ] {
        sqlx::query(&statement).execute(&db).await.unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let options = db.connect_options().as_ref().clone().username(&role);
    let pool = lazy_pool(options, 4);
    let (base, stop, handle) = spawn_over(pool.clone(), data.path()).await;
    // The LISTEN connection holds the role's only connection.
    let listening = crate::helpers::wait_until(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where usename = $1 and query ilike 'listen%' and state = 'idle'",
        )
        .bind(&role)
        .fetch_one(&db)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(listening.is_some(), "the LISTEN connection never came up");
    let message = unavailable_message(&base).await;
    stop.cancel();
    handle.await.unwrap();
    pool.close().await;
    // The role belongs to the whole server: dropped before anything can fail.
    for statement in [format!("drop owned by {role}"), format!("drop role {role}")] {
        sqlx::query(&statement).execute(&db).await.unwrap();
    }
    assert!(
        message.contains("refuses new connections") && message.contains("too many connections"),
        "{message}"
    );
}

/// A server that is not there at start: the process says why it gave up.
#[tokio::test]
async fn a_start_against_no_server_names_the_cause() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .arg("migrate")
        .env("STEPWISE_DATABASE_URL", "postgres://postgres@127.0.0.1:1/stepwise")
        .env("STEPWISE_DATABASE__CONNECT_RETRY_SECONDS", "1")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("pool timed out"), "{stderr}");
}

/// A process paused in the middle of a transaction (SIGSTOP, a frozen VM)
/// must not hold its locks forever: the server ends such a session after
/// `database.idle_in_transaction_timeout_seconds`, and the lock is free.
#[sqlx::test]
async fn a_session_idle_in_a_transaction_is_ended_and_its_locks_freed(db: PgPool) {
    let settings = stepwise::store::PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        idle_in_transaction_timeout: Duration::from_secs(1),
    };
    let url = database_url(&db).await;
    let paused = stepwise::store::connect(&url, settings, Duration::from_secs(10))
        .await
        .unwrap();
    sqlx::query("create table held (id int primary key)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("insert into held values (1)").execute(&db).await.unwrap();
    let mut tx = paused.begin().await.unwrap();
    sqlx::query("select 1 from held where id = 1 for update")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The holder now does nothing, as a paused process would. Another
    // transaction waiting for the row gets it once the server ends the session.
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut waiter = db.begin().await.unwrap();
        sqlx::query("select 1 from held where id = 1 for update")
            .execute(&mut *waiter)
            .await
            .unwrap();
        waiter.commit().await.unwrap();
    })
    .await;
    assert!(
        got.is_ok(),
        "the lock of a session idle in its transaction was never freed"
    );
    assert!(tx.commit().await.is_err(), "the idle session was ended by the server");
}
