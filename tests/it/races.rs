//! Requests that race each other, and input the database cannot store, get
//! a 4xx in the one error shape, never a 500: a pipeline deleted while
//! executions of it start, while it is updated or planned; a definition
//! sent as a JSON string that holds a NUL character.

use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    helpers::{Resp, TestApp},
    pipelines::pass_definition,
};

/// Asserts a status from `allowed`, and for an error the one error shape.
#[track_caller]
fn assert_answer(what: &str, resp: &Resp, allowed: &[u16]) {
    assert!(
        allowed.contains(&resp.status),
        "{what}: status {} not in {allowed:?}; body {}",
        resp.status,
        resp.text
    );
    if resp.status >= 400 {
        let error = &resp.body["error"];
        assert!(error["code"].is_string(), "{what}: {}", resp.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            resp.text
        );
    }
}

/// Starts race deletes, round after round: several clients start
/// executions of a pipeline until it is gone while another deletes it until
/// that succeeds. A start either wins (201) or finds the pipeline gone (404);
/// a delete is refused (409) while an execution runs. Nothing is a 5xx, and
/// no execution outlives its pipeline.
#[sqlx::test]
async fn starts_racing_a_delete_are_201_404_or_409(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (mut started, mut refused, mut lost) = (0, 0, 0);
    for round in 0..12 {
        let name = format!("race-{round}");
        app.create_pipeline(&name, pass_definition()).await;
        let (path, pipeline_path) = (
            format!("/v1/pipelines/{name}/executions"),
            format!("/v1/pipelines/{name}"),
        );
        let starter = || async {
            let mut answers = Vec::new();
            // Bounded, so the delete gets its turn once the starts stop.
            for _ in 0..25 {
                let resp = app.post(&path, &json!({})).await;
                let gone = resp.status == 404;
                answers.push(resp);
                if gone {
                    break;
                }
            }
            answers
        };
        let deleter = async {
            let mut answers = Vec::new();
            loop {
                let resp = app.delete(&pipeline_path).await;
                let done = resp.status != 409;
                answers.push(resp);
                if done {
                    return answers;
                }
            }
        };
        let (starts, deletes) = futures::join!(join_all((0..6).map(|_| starter())), deleter);
        for resp in starts.iter().flatten() {
            assert_answer("start", resp, &[201, 404]);
            started += usize::from(resp.status == 201);
            lost += usize::from(resp.status == 404);
        }
        for resp in &deletes {
            assert_answer("delete", resp, &[204, 409]);
            refused += usize::from(resp.status == 409);
        }
        let orphans: i64 = sqlx::query_scalar(
            "select count(*) from executions e where not exists (select 1 from pipelines p where p.id = e.pipeline_id)",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(orphans, 0, "round {round}: executions outlived their pipeline");
    }
    eprintln!("{started} starts won, {lost} found the pipeline gone, {refused} deletes refused");
}

/// Updates, plans and version reads racing a delete: each gets its answer
/// or a 404, never a 5xx.
#[sqlx::test]
async fn updates_and_plans_racing_a_delete_are_never_5xx(db: PgPool) {
    let app = TestApp::spawn(db).await;
    for round in 0..15 {
        let name = format!("race-{round}");
        app.create_pipeline(&name, pass_definition()).await;
        let update = json!({"definition": pass_definition()});
        let (path, plan_path, versions_path) = (
            format!("/v1/pipelines/{name}"),
            format!("/v1/pipelines/{name}/executions/plan"),
            format!("/v1/pipelines/{name}/versions"),
        );
        let empty = json!({});
        let updates = join_all((0..4).map(|_| app.put(&path, &update)));
        let plans = join_all((0..4).map(|_| app.post(&plan_path, &empty)));
        let versions = join_all((0..4).map(|_| app.get(&versions_path)));
        let delete = app.delete(&path);
        let (updates, plans, versions, delete) = futures::join!(updates, plans, versions, delete);
        for resp in &updates {
            assert_answer("update", resp, &[200, 404]);
        }
        for resp in &plans {
            assert_answer("plan", resp, &[200, 404]);
        }
        for resp in &versions {
            assert_answer("versions", resp, &[200, 404]);
        }
        assert_answer("delete", &delete, &[204]);
    }
}

/// A definition sent as a string holding JSON (SageMaker's form) is parsed
/// by the server; a NUL character inside it is a 400 naming where it is, on
/// create and on update, whether in a value or in a key.
#[sqlx::test]
async fn a_nul_inside_a_string_definition_is_a_400(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("p", pass_definition()).await;
    let with_nul_value = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "A", "Type": "Pass", "Arguments": {"x": "a\u{0}b"}}]});
    let with_nul_key = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "A", "Type": "Pass", "Arguments": {"k\u{0}": 1}}]});
    for (document, pointer) in [
        (&with_nul_value, "/Steps/0/Arguments/x"),
        (&with_nul_key, "/Steps/0/Arguments/k\u{0}"),
    ] {
        let as_string = Value::String(document.to_string());
        let create = app
            .post("/v1/pipelines", &json!({"name": "q", "definition": as_string}))
            .await;
        let message = create.expect_error(400, "ValidationError");
        assert!(message.contains("NUL"), "{message}");
        assert_eq!(create.detail_paths(), vec![pointer.to_string()], "{}", create.text);
        let update = app.put("/v1/pipelines/p", &json!({"definition": as_string})).await;
        let message = update.expect_error(400, "ValidationError");
        assert!(message.contains("NUL"), "{message}");
    }
    // The string form without a NUL still works.
    let fine = Value::String(pass_definition().to_string());
    app.put("/v1/pipelines/p", &json!({"definition": fine}))
        .await
        .expect(200);
    app.get("/v1/pipelines/q").await.expect_error(404, "NotFound");
}
