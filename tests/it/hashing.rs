//! A plan or a start hashes `CacheInputs` holding no database connection
//! and no open transaction (issue 20, item 13): while two of them are held
//! in their hashing, the rest of the API still gets the pool's connections,
//! and both then answer as they would have.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgPool};
use stepwise::config::HashProbe;

use crate::helpers::{definition_with, wait_until, TestApp};

#[sqlx::test]
async fn plans_and_starts_hash_their_inputs_holding_no_connection(db: PgPool) {
    let probe = HashProbe::holding();
    let held = probe.clone();
    // Three connections: the LISTEN one, and one for each request held
    // below, were they to hold one while hashing.
    let app = TestApp::spawn_with_pool(db, 3, move |c| c.hash_probe = held).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.csv");
    std::fs::write(&input, "a,b\n1,2\n").unwrap();
    let def = definition_with(
        json!([]),
        json!([{"Name": "Train", "Type": "Command", "CacheConfig": {"Enabled": true},
                "Arguments": {"Shell": "echo '{\"v\": 1}' > $STEPWISE_OUTPUTS",
                              "CacheInputs": [input.display().to_string()]}}]),
    );
    app.create_pipeline("hashes", def).await;
    // The worker hashes as it runs the step; the probe holds only plans and starts.
    let first = app.start("hashes", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");

    // A plan (its walk hashes Train's inputs to predict a hit) and a
    // "changed" start (its decision compares them with the source's).
    let plan = {
        let client = app.client.clone();
        let url = format!("{}/v1/pipelines/hashes/executions/plan", app.base);
        tokio::spawn(async move { client.post(url).json(&json!({})).send().await.unwrap() })
    };
    let start = {
        let client = app.client.clone();
        let url = format!("{}/v1/pipelines/hashes/executions", app.base);
        let body = json!({"selective_execution": {"source_execution": first, "selected_steps": "changed"}});
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
    };
    tokio::time::timeout(Duration::from_secs(20), probe.entered(2))
        .await
        .expect("both requests begin hashing");

    // Both are held in their hashing: no connection of the pool but the
    // LISTEN one is in use (the worker's polls give theirs back at once),
    // and no transaction is open.
    let in_use = || app.db.size() - app.db.num_idle() as u32;
    let free = wait_until(Duration::from_secs(20), || async { (in_use() <= 1).then_some(()) }).await;
    assert!(free.is_some(), "{} connections stay in use while hashing", in_use());
    let mut watcher = sqlx::postgres::PgConnection::connect_with(&app.db.connect_options())
        .await
        .unwrap();
    let open: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and state like 'idle in transaction%'",
    )
    .fetch_one(&mut watcher)
    .await
    .unwrap();
    assert_eq!(open, 0, "a transaction is open while hashing");
    let listed = tokio::time::timeout(Duration::from_secs(30), app.get("/v1/pipelines/hashes"))
        .await
        .expect("the API answers while hashing is held");
    assert_eq!(listed.status, 200, "{}", listed.text);
    let executions = tokio::time::timeout(Duration::from_secs(30), app.get("/v1/pipelines/hashes/executions"))
        .await
        .expect("the API answers while hashing is held");
    assert_eq!(executions.status, 200, "{}", executions.text);

    probe.release();
    let plan = tokio::time::timeout(Duration::from_secs(60), plan)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plan.status(), 200);
    let plan: Value = plan.json().await.unwrap();
    assert_eq!(plan["steps"][0]["verdict"], "CacheHit", "{plan}");
    let start = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(start.status(), 201);
    let started: Value = start.json().await.unwrap();
    let id = started["execution_id"].as_str().unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "Succeeded");
    // Nothing changed: Train is reused from the source.
    let train = app.step(id, "Train").await;
    assert!(train["reused_from"].is_object(), "{train}");
    app.stop().await;
}

#[sqlx::test]
async fn past_the_hashing_budget_the_plan_says_what_was_not_hashed(db: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.csv");
    std::fs::write(&input, "a,b\n1,2\n").unwrap();
    let def = definition_with(
        json!([]),
        json!([{"Name": "Train", "Type": "Command", "CacheConfig": {"Enabled": true},
                "Arguments": {"Shell": "echo '{\"v\": 1}' > $STEPWISE_OUTPUTS",
                              "CacheInputs": [input.display().to_string()]}}]),
    );
    let app = TestApp::spawn(db.clone()).await;
    app.create_pipeline("budget", def).await;
    let first = app.start("budget", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    app.stop().await;

    // The same database, served with no time for hashing at all.
    let app = TestApp::spawn_with(db, |c| c.worker.cache_input_timeout_seconds = 0).await;
    let plan = app
        .post("/v1/pipelines/budget/executions/plan", &json!({}))
        .await
        .expect(200)
        .clone();
    let train = &plan["steps"][0];
    assert_eq!(train["verdict"], "RunUnlessUnchanged", "{plan}");
    assert!(train["reason"].as_str().unwrap().contains("were not hashed"), "{plan}");
    let body = json!({"selective_execution": {"source_execution": first, "selected_steps": "changed"}});
    let plan = app
        .post("/v1/pipelines/budget/executions/plan", &body)
        .await
        .expect(200)
        .clone();
    let train = &plan["steps"][0];
    assert_eq!(train["verdict"], "Run", "{plan}");
    assert!(
        train["changes"].to_string().contains("CacheInputs: not compared"),
        "{plan}"
    );
    app.stop().await;
}
