//! Retention and quotas: `retention.executions_days` removes old ended
//! executions with their rows and files, but not what a cache entry or a
//! reuse still needs; a start naming a removed source gets a clear 400;
//! deleting a pipeline removes its files; `cache.max_expire_after` caps
//! every `ExpireAfter`. Ages are set in SQL and retention is run directly
//! (the app's own maintenance keeps everything: executions_days = 0).

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise::{
    domain::duration::parse_expire_after,
    engine::retention::{self, Policy, Report},
};
use uuid::Uuid;

use crate::helpers::{definition_with, TestApp};

async fn spawn(db: PgPool) -> TestApp {
    TestApp::spawn_with(db, |c| c.retention.executions_days = 0).await
}

fn data_dir(app: &TestApp) -> PathBuf {
    std::fs::canonicalize(app.data_dir.path()).unwrap()
}

fn policy(days: u32) -> Policy {
    Policy {
        executions_days: days,
        max_expire_after: parse_expire_after("P30D").unwrap(),
    }
}

async fn retain(app: &TestApp, days: u32) -> Report {
    retention::run(&app.db, &data_dir(app), policy(days), Utc::now())
        .await
        .expect("retention runs")
}

/// `Make` writes an artifact (cached when `cache` is given); `Use` reads its output.
fn pipeline(cache: Option<Value>) -> Value {
    let mut make = json!({"Name": "Make", "Type": "Command", "Arguments": {
        "Shell": "echo scratch > scratch.txt; echo data > $STEPWISE_ARTIFACTS/data.txt; echo '{\"n\": 1}' > $STEPWISE_OUTPUTS"}});
    if let Some(cache) = cache {
        make["CacheConfig"] = cache;
    }
    definition_with(
        json!([]),
        json!([make, {"Name": "Use", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.Make.Outputs.n"}}}]),
    )
}

async fn run(app: &TestApp, pipeline: &str, body: Value) -> String {
    let id = app.start(pipeline, body).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    id
}

/// Makes execution `id` look as if it ended `days` days ago (its step runs
/// too when `steps`, which ages its cache entries).
async fn age(app: &TestApp, id: &str, days: i32, steps: bool) {
    let id = Uuid::parse_str(id).unwrap();
    sqlx::query("update executions set ended_at = now() - make_interval(days => $2) where id = $1")
        .bind(id)
        .bind(days)
        .execute(&app.db)
        .await
        .unwrap();
    if steps {
        sqlx::query("update step_runs set ended_at = now() - make_interval(days => $2) where execution_id = $1")
            .bind(id)
            .bind(days)
            .execute(&app.db)
            .await
            .unwrap();
    }
}

fn dirs_of(app: &TestApp, id: &str) -> [PathBuf; 2] {
    let root = data_dir(app);
    [root.join("runs").join(id), root.join("artifacts").join(id)]
}

async fn exists(app: &TestApp, id: &str) -> bool {
    let found: Option<i32> = sqlx::query_scalar("select 1 from executions where id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_optional(&app.db)
        .await
        .unwrap();
    found.is_some()
}

async fn count(app: &TestApp, sql: &str, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar(sql).bind(ids).fetch_one(&app.db).await.unwrap()
}

#[sqlx::test]
async fn old_unused_executions_go_with_their_rows_and_files_and_recent_ones_stay(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline("plain", pipeline(None)).await;
    let old = run(&app, "plain", json!({})).await;
    let recent = run(&app, "plain", json!({})).await;
    let old_uuid = Uuid::parse_str(&old).unwrap();
    let step_runs: Vec<Uuid> = sqlx::query_scalar("select id from step_runs where execution_id = $1")
        .bind(old_uuid)
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(dirs_of(&app, &old).iter().all(|d| d.is_dir()));
    age(&app, &old, 40, true).await;
    age(&app, &recent, 29, true).await;

    // Keeping everything keeps it.
    assert_eq!(retain(&app, 0).await.executions, 0);
    assert!(exists(&app, &old).await);

    let report = retain(&app, 30).await;
    assert_eq!(report.executions, 1, "{report:?}");
    assert_eq!(report.directories, 2, "{report:?}");
    assert!(!exists(&app, &old).await);
    assert!(dirs_of(&app, &old).iter().all(|d| !d.exists()), "its files are gone");
    let ids = [old_uuid];
    assert_eq!(
        count(
            &app,
            "select count(*) from step_runs where execution_id = any($1)",
            &ids
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "select count(*) from step_attempts where step_run_id = any($1)",
            &step_runs
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "select count(*) from execution_events where execution_id = any($1)",
            &ids
        )
        .await,
        0
    );
    app.get(&format!("/v1/executions/{old}"))
        .await
        .expect_error(404, "NotFound");

    assert!(exists(&app, &recent).await, "a recent execution stays");
    assert!(dirs_of(&app, &recent)[1].is_dir());
    assert_eq!(retain(&app, 30).await.executions, 0, "nothing more to remove");

    // A start or a plan naming the removed execution as its source says why.
    let body = json!({"selective_execution": {"source_execution": old, "selected_steps": ["Use"]}});
    let message = app
        .post("/v1/pipelines/plain/executions", &body)
        .await
        .expect_error(400, "ValidationError");
    assert!(
        message.contains(&format!("source execution {old} was removed by retention"))
            && message.contains("retention.executions_days = 30")
            && message.contains("choose a newer source"),
        "{message}"
    );
    let plan = app.post("/v1/pipelines/plain/executions/plan", &body).await;
    let errors = plan.expect(200)["errors"].to_string();
    assert!(errors.contains("was removed by retention"), "{errors}");
}

#[sqlx::test]
async fn a_source_stays_while_a_reuse_or_a_live_cache_entry_needs_it(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline(
        "cached",
        pipeline(Some(json!({"Enabled": true, "ExpireAfter": "P365D"}))),
    )
    .await;
    let source = run(&app, "cached", json!({})).await;
    let body = json!({"selective_execution": {"source_execution": source, "selected_steps": ["Use"]}});
    let reuser = run(&app, "cached", body).await;
    let steps = app.steps(&reuser).await;
    assert!(steps[0]["reused_from"]["source_execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(&source));

    // Old, but its cache entry is younger than the cap, and it is reused.
    age(&app, &source, 40, false).await;
    assert_eq!(retain(&app, 30).await.executions, 0);
    assert!(exists(&app, &source).await);

    // The entry expired (older than the cap): the reuse still holds it.
    age(&app, &source, 40, true).await;
    assert_eq!(retain(&app, 30).await.executions, 0);
    assert!(exists(&app, &source).await);
    assert!(dirs_of(&app, &source)[1].is_dir(), "the reused artifacts stay");
    let make = app.step(&reuser, "Make").await;
    let artifacts = make["properties"]["ArtifactsUri"].as_str().unwrap();
    assert!(Path::new(artifacts).join("data.txt").is_file());

    // Once the reuser is old too, it goes first and the source after it.
    age(&app, &reuser, 35, true).await;
    assert_eq!(retain(&app, 30).await.executions, 1);
    assert!(!exists(&app, &reuser).await);
    assert!(exists(&app, &source).await, "removed only by a later run");
    assert_eq!(retain(&app, 30).await.executions, 1);
    assert!(!exists(&app, &source).await);
    assert!(dirs_of(&app, &source).iter().all(|d| !d.exists()));
}

#[sqlx::test]
async fn a_live_cache_entry_and_a_cache_hit_keep_the_entry(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline("cached", pipeline(Some(json!({"Enabled": true}))))
        .await;
    let entry = run(&app, "cached", json!({})).await;
    // Ended long ago, but its cache entry is younger than the cap.
    age(&app, &entry, 40, false).await;
    assert_eq!(retain(&app, 30).await.executions, 0, "a live cache entry keeps it");
    let hit = run(&app, "cached", json!({})).await;
    assert_eq!(app.step(&hit, "Make").await["cache"]["status"], "hit");
    age(&app, &entry, 40, true).await;
    assert_eq!(retain(&app, 30).await.executions, 0, "the hit refers to its artifacts");
    age(&app, &hit, 40, true).await;
    assert_eq!(retain(&app, 30).await.executions, 1);
    assert_eq!(retain(&app, 30).await.executions, 1);
    assert!(!exists(&app, &entry).await && !exists(&app, &hit).await);
}

#[sqlx::test]
async fn concurrent_runs_share_the_work_without_failing(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline("plain", pipeline(None)).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = run(&app, "plain", json!({})).await;
        age(&app, &id, 40, true).await;
        ids.push(id);
    }
    let (a, b) = tokio::join!(retain(&app, 30), retain(&app, 30));
    assert_eq!(a.executions + b.executions, 4, "{a:?} {b:?}");
    for id in &ids {
        assert!(!exists(&app, id).await);
        assert!(dirs_of(&app, id).iter().all(|d| !d.exists()));
    }
    let tombstones: i64 = sqlx::query_scalar("select count(*) from execution_tombstones")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(tombstones, 4);
}

#[sqlx::test]
async fn deleting_a_pipeline_removes_its_files_and_the_sweep_removes_orphans(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline("doomed", pipeline(None)).await;
    let id = run(&app, "doomed", json!({})).await;
    assert!(dirs_of(&app, &id).iter().all(|d| d.is_dir()));
    app.delete("/v1/pipelines/doomed").await.expect(204);
    assert!(
        dirs_of(&app, &id).iter().all(|d| !d.exists()),
        "its directories are gone"
    );

    // A crash between a commit and the removal leaves directories of an
    // execution that no longer exists: the next run removes them, and
    // leaves alone what is not an execution's.
    let root = data_dir(&app);
    let orphan = Uuid::now_v7().to_string();
    std::fs::create_dir_all(root.join("runs").join(&orphan).join("Make/attempt-1")).unwrap();
    std::fs::create_dir_all(root.join("artifacts").join(&orphan)).unwrap();
    std::fs::create_dir_all(root.join("runs").join("not-an-execution")).unwrap();
    app.create_pipeline("kept", pipeline(None)).await;
    let kept = run(&app, "kept", json!({})).await;
    let report = retain(&app, 0).await;
    assert_eq!(report.orphan_directories, 2, "{report:?}");
    assert!(!root.join("runs").join(&orphan).exists() && !root.join("artifacts").join(&orphan).exists());
    assert!(root.join("runs").join("not-an-execution").is_dir());
    assert!(
        dirs_of(&app, &kept).iter().all(|d| d.is_dir()),
        "a live execution's files stay"
    );
}

#[sqlx::test]
async fn a_command_step_leaves_no_scratch_directory_behind(db: PgPool) {
    let app = spawn(db).await;
    app.create_pipeline("plain", pipeline(None)).await;
    let id = run(&app, "plain", json!({})).await;
    let attempt = data_dir(&app).join("runs").join(&id).join("Make/attempt-1");
    // Removed in the background once the process has ended.
    let gone = crate::helpers::wait_until(std::time::Duration::from_secs(30), || async {
        (!attempt.join("work").exists() && !attempt.join("outputs.json").exists()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the scratch working directory and outputs file are removed"
    );
    assert!(attempt.join("log.txt").is_file(), "the log stays until retention");
    let make = app.step(&id, "Make").await;
    assert_eq!(make["properties"]["Outputs"]["n"], 1);
    let artifacts = make["properties"]["ArtifactsUri"].as_str().unwrap();
    assert!(Path::new(artifacts).join("data.txt").is_file(), "artifacts stay");
}

#[sqlx::test]
async fn the_server_cap_bounds_every_expire_after(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| {
        c.retention.executions_days = 0;
        c.cache.max_expire_after = parse_expire_after("PT1H").unwrap();
    })
    .await;
    let steps = json!([
        {"Name": "Long", "Type": "Pass", "Arguments": {"v": 1}, "CacheConfig": {"Enabled": true, "ExpireAfter": "P365D"}},
        {"Name": "Forever", "Type": "Pass", "Arguments": {"v": 2}, "CacheConfig": {"Enabled": true}}
    ]);
    app.create_pipeline("capped", definition_with(json!([]), steps)).await;
    run(&app, "capped", json!({})).await;
    let fresh = run(&app, "capped", json!({})).await;
    for step in ["Long", "Forever"] {
        assert_eq!(app.step(&fresh, step).await["cache"]["status"], "hit", "{step}");
    }
    let plan = app.post("/v1/pipelines/capped/executions/plan", &json!({})).await;
    assert_eq!(plan.expect(200)["steps"][0]["verdict"], "CacheHit");

    // Two hours later, past the one-hour cap: neither entry serves.
    sqlx::query("update step_runs set ended_at = ended_at - interval '2 hours' where cache_entry")
        .execute(&app.db)
        .await
        .unwrap();
    let plan = app.post("/v1/pipelines/capped/executions/plan", &json!({})).await;
    let verdicts: Vec<&str> = plan.expect(200)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["Run", "Run"], "the plan agrees with the start");
    let late = run(&app, "capped", json!({})).await;
    for step in ["Long", "Forever"] {
        let run = app.step(&late, step).await;
        assert_eq!(run["cache"]["status"], "miss", "{step}: {run}");
        let reason = run["cache"]["miss_reason"].as_str().unwrap();
        assert!(reason.contains("cache.max_expire_after"), "{reason}");
    }
}

#[sqlx::test]
async fn maintenance_runs_retention_every_interval(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| {
        c.retention.executions_days = 30;
        c.retention.interval_seconds = 1;
        // Maintenance ticks every lease_seconds / 3 (at least 0.2 s).
        c.worker.lease_seconds = 3;
    })
    .await;
    app.create_pipeline("plain", pipeline(None)).await;
    let old = run(&app, "plain", json!({})).await;
    let recent = run(&app, "plain", json!({})).await;
    age(&app, &old, 31, true).await;
    let gone = crate::helpers::wait_until(std::time::Duration::from_secs(30), || async {
        (!exists(&app, &old).await).then_some(())
    })
    .await;
    assert!(gone.is_some(), "maintenance removed the old execution");
    assert!(exists(&app, &recent).await);
    let dirs = dirs_of(&app, &old);
    let files_gone = crate::helpers::wait_until(std::time::Duration::from_secs(30), || async {
        dirs.iter().all(|d| !d.exists()).then_some(())
    })
    .await;
    assert!(files_gone.is_some(), "and its files");
}
