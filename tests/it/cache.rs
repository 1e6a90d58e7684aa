//! Step caching (SPEC 4): hits, misses explained, expiry, purge, modes,
//! deleted artifacts, warnings, and selected steps bypassing the lookup.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, TestApp};

fn cached_pipeline(dir: &std::path::Path, extra_env: Value) -> Value {
    let mut env = json!({"EPOCHS": {"Get": "Parameters.Epochs"}});
    env.as_object_mut()
        .unwrap()
        .extend(extra_env.as_object().unwrap().clone());
    definition_with(
        json!([{"Name": "Epochs", "Type": "Integer", "DefaultValue": 10}]),
        json!([
            {"Name": "Train", "Type": "Command",
             "Arguments": {"Shell": format!("{}; echo model > $STEPWISE_ARTIFACTS/model.bin; echo '{{\"acc\": 0.9}}' > $STEPWISE_OUTPUTS", count_run(dir)), "Env": env, "TimeoutSeconds": 60},
             "CacheConfig": {"Enabled": true, "ExpireAfter": "P30D"}},
            {"Name": "Use", "Type": "Pass", "Arguments": {"acc": {"Get": "Steps.Train.Outputs.acc"}}}
        ]),
    )
}

async fn run(app: &TestApp, body: Value) -> (String, Value) {
    let id = app.start("cached", body).await;
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let train = app.step(&id, "Train").await;
    (id, train)
}

#[sqlx::test]
async fn an_unchanged_rerun_hits_and_a_parameter_change_misses_with_a_reason(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("cached", cached_pipeline(dir.path(), json!({})))
        .await;

    let (first_id, first) = run(&app, json!({})).await;
    assert_eq!(first["cache"]["status"], "miss");
    assert!(
        first["cache"]["miss_reason"]
            .as_str()
            .unwrap()
            .contains("no earlier cache entry"),
        "{first}"
    );
    let key = first["cache"]["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    assert!(first["cache"]["components"]["Env"]["EPOCHS"] == 10);

    let (second_id, second) = run(&app, json!({})).await;
    assert_eq!(runs_of(dir.path(), "Train"), 1, "the hit ran no process");
    assert_eq!(second["status"], "Succeeded");
    assert_eq!(second["cache"]["status"], "hit");
    assert_eq!(second["cache"]["key"], key.as_str());
    assert!(second["cache_hit"]["source_execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(&first_id));
    assert_eq!(
        second["properties"], first["properties"],
        "the property document is copied"
    );
    assert_eq!(app.step(&second_id, "Use").await["properties"]["Outputs"]["acc"], 0.9);

    let (_, third) = run(&app, json!({"parameters": {"Epochs": 12}})).await;
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    assert_eq!(third["cache"]["status"], "miss");
    let reason = third["cache"]["miss_reason"].as_str().unwrap();
    assert!(reason.contains("Env.EPOCHS: 10 -> 12"), "{reason}");

    // Not in the key: TimeoutSeconds.
    let mut changed = cached_pipeline(dir.path(), json!({}));
    changed["Steps"][0]["Arguments"]["TimeoutSeconds"] = json!(120);
    app.put("/v1/pipelines/cached", &json!({"definition": changed}))
        .await
        .expect(200);
    let (_, fourth) = run(&app, json!({})).await;
    assert_eq!(fourth["cache"]["status"], "hit");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
}

#[sqlx::test]
async fn expired_purged_and_artifact_less_entries_do_not_hit(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("cached", cached_pipeline(dir.path(), json!({})))
        .await;
    let (_, first) = run(&app, json!({})).await;

    // Expiry: the entry ended longer ago than ExpireAfter (P30D).
    sqlx::query("update step_runs set ended_at = ended_at - interval '31 days' where cache_entry")
        .execute(&app.db)
        .await
        .unwrap();
    let (_, expired) = run(&app, json!({})).await;
    assert_eq!(expired["cache"]["status"], "miss");
    assert!(
        expired["cache"]["miss_reason"]
            .as_str()
            .unwrap()
            .contains("older than ExpireAfter"),
        "{expired}"
    );
    assert_eq!(runs_of(dir.path(), "Train"), 2);

    // Artifacts deleted: the newest entry cannot serve a hit.
    let artifacts = expired["properties"]["ArtifactsUri"].as_str().unwrap();
    std::fs::remove_dir_all(artifacts).unwrap();
    let (_, gone) = run(&app, json!({})).await;
    assert_eq!(gone["cache"]["status"], "miss");
    assert!(
        gone["cache"]["miss_reason"].as_str().unwrap().contains("artifacts"),
        "{gone}"
    );
    assert_eq!(runs_of(dir.path(), "Train"), 3);

    // Purge: no entry is left to hit or to compare with.
    let purged = app.delete("/v1/pipelines/cached/cache?step=Train").await;
    assert!(purged.expect(200)["deleted"].as_u64().unwrap() >= 1);
    let (_, after) = run(&app, json!({})).await;
    assert_eq!(after["cache"]["status"], "miss");
    assert!(after["cache"]["miss_reason"]
        .as_str()
        .unwrap()
        .contains("no earlier cache entry"));
    assert_eq!(runs_of(dir.path(), "Train"), 4);
    assert_eq!(first["cache"]["status"], "miss");
    app.delete("/v1/pipelines/cached/cache").await.expect(200);
    app.delete("/v1/pipelines/none/cache")
        .await
        .expect_error(404, "NotFound");
}

#[sqlx::test]
async fn refresh_and_off_modes(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("cached", cached_pipeline(dir.path(), json!({})))
        .await;
    run(&app, json!({})).await;
    let (refresh_id, refreshed) = run(&app, json!({"cache_mode": "refresh"})).await;
    assert_eq!(refreshed["cache"]["status"], "bypassed");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    let (_, off) = run(&app, json!({"cache_mode": "off"})).await;
    assert_eq!(off["cache"]["status"], "disabled");
    assert_eq!(runs_of(dir.path(), "Train"), 3);
    // The newest entry is the refreshed run; the "off" run wrote none.
    let (_, hit) = run(&app, json!({})).await;
    assert_eq!(hit["cache"]["status"], "hit");
    assert!(hit["cache_hit"]["source_execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(&refresh_id));
    assert_eq!(runs_of(dir.path(), "Train"), 3);
}

#[sqlx::test]
async fn per_execution_values_in_the_key_are_warned_about(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let definition = cached_pipeline(dir.path(), json!({"RUN": {"Get": "Execution.PipelineExecutionId"}}));
    app.create_pipeline("cached", definition).await;
    run(&app, json!({})).await;
    let (_, second) = run(&app, json!({})).await;
    assert_eq!(second["cache"]["status"], "miss");
    let warnings = second["cache"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("PipelineExecutionId")),
        "{warnings:?}"
    );
}

#[sqlx::test]
async fn cache_inputs_content_enters_the_key(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("train.csv"), "a,b\n1,2\n").unwrap();
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Train", "Type": "Command",
                "Arguments": {"Shell": count_run(dir.path()), "WorkingDirectory": data.path(), "CacheInputs": ["train.csv"]},
                "CacheConfig": {"Enabled": true}}]),
    );
    app.create_pipeline("cached", definition).await;
    run(&app, json!({})).await;
    let (_, hit) = run(&app, json!({})).await;
    assert_eq!(hit["cache"]["status"], "hit");
    std::fs::write(data.path().join("train.csv"), "a,b\n1,3\n").unwrap();
    let (_, miss) = run(&app, json!({})).await;
    assert_eq!(miss["cache"]["status"], "miss");
    assert!(
        miss["cache"]["miss_reason"].as_str().unwrap().contains("train.csv"),
        "{miss}"
    );
    assert_eq!(runs_of(dir.path(), "Train"), 2);
}

#[sqlx::test]
async fn selected_steps_bypass_the_cache_unless_asked(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("cached", cached_pipeline(dir.path(), json!({})))
        .await;
    let (source, _) = run(&app, json!({})).await;
    let selective = json!({"source_execution": source, "selected_steps": ["Train"]});
    let (id, _) = (app.start("cached", json!({"selective_execution": selective})).await, ());
    app.wait_terminal(&id).await;
    let train = app.step(&id, "Train").await;
    assert_eq!(train["cache"]["status"], "bypassed");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    let id = app
        .start("cached", json!({"selective_execution": selective, "cache_mode": "use"}))
        .await;
    app.wait_terminal(&id).await;
    assert_eq!(app.step(&id, "Train").await["cache"]["status"], "hit");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
    // The plan knows the hit in advance.
    let plan = app.post("/v1/pipelines/cached/executions/plan", &json!({})).await;
    let plan = plan.expect(200);
    assert_eq!(plan["steps"][0]["verdict"], "CacheHit", "{plan}");
}

/// Issue 11 item 9: `Env` `10` and `"10"` reach the process as the same
/// text, so they are one cache key: the second run is a hit.
#[sqlx::test]
async fn env_values_the_process_sees_alike_share_a_key(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline(
        "cached",
        cached_pipeline(dir.path(), json!({"BATCH": 32, "FAST": true})),
    )
    .await;
    let (_, first) = run(&app, json!({})).await;
    assert_eq!(first["cache"]["status"], "miss");
    let texts = cached_pipeline(dir.path(), json!({"BATCH": "32", "FAST": "true"}));
    app.put("/v1/pipelines/cached", &json!({"definition": texts}))
        .await
        .expect(200);
    let (_, second) = run(&app, json!({})).await;
    assert_eq!(second["cache"]["status"], "hit", "{second}");
    assert_eq!(second["cache"]["key"], first["cache"]["key"]);
    assert_eq!(runs_of(dir.path(), "Train"), 1);
}

/// Issue 11 item 9: an artifacts directory that still exists but was
/// emptied, of a step that had written files, is a miss with a reason.
#[sqlx::test]
async fn an_emptied_artifacts_directory_is_not_a_hit(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("cached", cached_pipeline(dir.path(), json!({})))
        .await;
    let (_, first) = run(&app, json!({})).await;
    let artifacts = std::path::PathBuf::from(first["properties"]["ArtifactsUri"].as_str().unwrap());
    assert!(artifacts.join("model.bin").is_file());
    std::fs::remove_file(artifacts.join("model.bin")).unwrap();
    assert!(artifacts.is_dir());

    let plan = app
        .post("/v1/pipelines/cached/executions/plan", &json!({}))
        .await
        .expect(200)
        .clone();
    let train = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "Train")
        .unwrap();
    assert_eq!(train["verdict"], "Run", "{plan}");

    let (_, second) = run(&app, json!({})).await;
    assert_eq!(second["cache"]["status"], "miss", "{second}");
    let reason = second["cache"]["miss_reason"].as_str().unwrap();
    assert!(reason.contains("is empty") && reason.contains("artifacts"), "{reason}");
    assert_eq!(runs_of(dir.path(), "Train"), 2);
}
