//! Fenced transitions under races, set up deterministically: a transaction
//! of the test holds an execution's lock while the racing transitions queue
//! behind it in a known order (seen in `pg_stat_activity`), then lets go.
//! Also: stuck executions are repaired, a retry gets a fresh budget, a
//! released attempt keeps its place in the history, and one process
//! re-claiming its own rescued step keeps heartbeating the new attempt.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Transaction};
use stepwise::{
    engine::{self, Applied, CallbackReport, StepOutcome},
    store::steps,
};
use uuid::Uuid;

use crate::helpers::{count_run, definition_with, runs_of, wait_until, TestApp};

/// Holds the execution's row lock (as a transition does) until committed.
async fn hold_execution(db: &PgPool, execution: Uuid) -> Transaction<'static, Postgres> {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("select 1 from executions where id = $1 for no key update")
        .bind(execution)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until `n` backends of this database wait for a lock.
async fn wait_for_lock_waiters(db: &PgPool, n: i64) {
    wait_until(Duration::from_secs(30), || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        (waiting >= n).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{n} transitions never queued for the lock"));
}

/// An app without workers (the test claims by hand) and with a long lease,
/// so maintenance rescues only what the test expires.
async fn app_without_workers(db: PgPool) -> TestApp {
    TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 600;
    })
    .await
}

async fn step_state(db: &PgPool, execution: Uuid, name: &str) -> (String, i32) {
    sqlx::query_as("select status, attempt from step_runs where execution_id = $1 and step_name = $2")
        .bind(execution)
        .bind(name)
        .fetch_one(db)
        .await
        .unwrap()
}

fn two_step_chain() -> Value {
    definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Pass", "Arguments": {"v": 1}},
            {"Name": "B", "Type": "Pass", "Arguments": {"v": {"Get": "Steps.A.Outputs.v"}}}
        ]),
    )
}

/// Starts the chain and claims A by hand: returns the execution and A's run.
async fn start_and_claim_a(app: &TestApp) -> (Uuid, Uuid) {
    app.create_pipeline("chain", two_step_chain()).await;
    let execution: Uuid = app.start("chain", json!({})).await.parse().unwrap();
    let claimed = steps::claim(&app.db, Uuid::now_v7(), 10, 600.0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].step_name, "A");
    (execution, claimed[0].id)
}

fn success() -> StepOutcome {
    StepOutcome::Succeeded {
        properties: json!({"Outputs": {"v": 1}}),
        metadata: json!({}),
        exit_code: None,
        key: None,
    }
}

fn lost() -> StepOutcome {
    StepOutcome::failed("Step.SERVICE_FAULT", "the worker running attempt 1 was lost")
}

/// Runs `first` then `second` against the same attempt, queued behind a
/// held lock in that order, and returns what each was told.
async fn race(app: &TestApp, execution: Uuid, id: Uuid, first: StepOutcome, second: StepOutcome) -> (Applied, Applied) {
    let held = hold_execution(&app.db, execution).await;
    let db = app.db.clone();
    let first = tokio::spawn(async move { engine::complete_attempt(&db, id, 1, first, None).await });
    wait_for_lock_waiters(&app.db, 1).await;
    let db = app.db.clone();
    let second = tokio::spawn(async move { engine::complete_attempt(&db, id, 1, second, None).await });
    wait_for_lock_waiters(&app.db, 2).await;
    held.commit().await.unwrap();
    (first.await.unwrap().unwrap(), second.await.unwrap().unwrap())
}

#[sqlx::test]
async fn a_rescue_queued_behind_a_success_does_not_run_the_step_again(db: PgPool) {
    let app = app_without_workers(db).await;
    let (execution, a) = start_and_claim_a(&app).await;
    let (succeeded, rescued) = race(&app, execution, a, success(), lost()).await;
    assert_eq!(succeeded, Applied::AppliedQueued);
    assert_eq!(
        rescued,
        Applied::Stale,
        "the rescue saw the step as it was before the success"
    );
    assert_eq!(step_state(&app.db, execution, "A").await, ("Succeeded".into(), 1));
    assert_eq!(step_state(&app.db, execution, "B").await.0, "Starting");
}

#[sqlx::test]
async fn a_success_queued_behind_a_rescue_does_not_queue_the_dependent(db: PgPool) {
    let app = app_without_workers(db).await;
    let (execution, a) = start_and_claim_a(&app).await;
    let (rescued, succeeded) = race(&app, execution, a, lost(), success()).await;
    assert_eq!(rescued, Applied::AppliedQueued, "the rescue queued a retry");
    assert_eq!(succeeded, Applied::Stale);
    assert_eq!(step_state(&app.db, execution, "A").await, ("Starting".into(), 1));
    let (b, _) = step_state(&app.db, execution, "B").await;
    assert_eq!(b, "Pending", "B must wait for A's next attempt");
    let remaining: i32 =
        sqlx::query_scalar("select remaining_deps from step_runs where execution_id = $1 and step_name = 'B'")
            .bind(execution)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(remaining, 1);
}

fn callback_then_pass() -> Value {
    definition_with(
        json!([]),
        json!([
            {"Name": "Approve", "Type": "Callback", "Arguments": {"OutputParameters": [{"OutputName": "ok", "OutputType": "Boolean"}]}},
            {"Name": "Use", "Type": "Pass", "Arguments": {"ok": {"Get": "Steps.Approve.OutputParameters.ok"}}}
        ]),
    )
}

/// Starts the callback pipeline on an app with workers and returns the
/// execution and the waiting step's token.
async fn waiting_callback(app: &TestApp) -> (Uuid, Uuid) {
    app.create_pipeline("cb", callback_then_pass()).await;
    let execution = app.start("cb", json!({})).await;
    let step = app
        .wait_step(&execution, "Approve", |s| {
            s["metadata"]["callback"]["token"].is_string()
        })
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap().parse().unwrap();
    (execution.parse().unwrap(), token)
}

#[sqlx::test]
async fn a_callback_report_that_loses_to_a_stop_gets_409(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (execution, token) = waiting_callback(&app).await;
    let held = hold_execution(&app.db, execution).await;
    let db = app.db.clone();
    let stop = tokio::spawn(async move { engine::stop_execution(&db, execution).await });
    wait_for_lock_waiters(&app.db, 1).await;
    let db = app.db.clone();
    let report = tokio::spawn(async move {
        engine::complete_callback(&db, token, CallbackReport::Success(json!({"ok": true}))).await
    });
    wait_for_lock_waiters(&app.db, 2).await;
    held.commit().await.unwrap();
    stop.await.unwrap().unwrap();
    let reported = report.await.unwrap();
    assert!(
        matches!(reported, Err(stepwise::store::StoreError::Conflict(_))),
        "{reported:?}"
    );
    let body = app.wait_terminal(&execution.to_string()).await;
    assert_eq!(body["status"], "Stopped");
    assert_eq!(app.step(&execution.to_string(), "Approve").await["status"], "Stopped");
}

#[sqlx::test]
async fn a_callback_time_out_queued_behind_a_reported_success_does_not_undo_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let (execution, token) = waiting_callback(&app).await;
    let (id, attempt): (Uuid, i32) = sqlx::query_as("select id, attempt from step_runs where callback_token = $1")
        .bind(token)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let held = hold_execution(&app.db, execution).await;
    let db = app.db.clone();
    let report = tokio::spawn(async move {
        engine::complete_callback(&db, token, CallbackReport::Success(json!({"ok": true}))).await
    });
    wait_for_lock_waiters(&app.db, 1).await;
    let db = app.db.clone();
    let timeout = tokio::spawn(async move {
        let outcome = StepOutcome::failed("Callback.TIMEOUT", "no callback arrived before TimeoutSeconds");
        engine::complete_attempt(&db, id, attempt, outcome, None).await
    });
    wait_for_lock_waiters(&app.db, 2).await;
    held.commit().await.unwrap();
    report.await.unwrap().unwrap();
    assert_eq!(timeout.await.unwrap().unwrap(), Applied::Stale);
    let body = app.wait_terminal(&execution.to_string()).await;
    assert_eq!(body["status"], "Succeeded", "{body}");
}

#[sqlx::test]
async fn an_execution_whose_finish_check_was_lost_is_ended(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.lease_seconds = 3).await;
    app.create_pipeline(
        "one",
        definition_with(json!([]), json!([{"Name": "A", "Type": "Pass", "Arguments": {}}])),
    )
    .await;
    let id = app.start("one", json!({})).await;
    app.wait_terminal(&id).await;
    // As a lost connection after the leaf's commit leaves it.
    sqlx::query("update executions set status = 'Executing', ended_at = null where id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    // The retried report is judged stale, and checks again.
    let (run, attempt): (Uuid, i32) = sqlx::query_as("select id, attempt from step_runs where execution_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let applied = engine::complete_attempt(&app.db, run, attempt, success(), None)
        .await
        .unwrap();
    assert_eq!(applied, Applied::Stale);
    assert_eq!(
        app.get(&format!("/v1/executions/{id}")).await.body["status"],
        "Succeeded"
    );
    // And maintenance repairs one that nothing reports again.
    sqlx::query("update executions set status = 'Executing', ended_at = null where id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let body = app.wait_terminal(&id).await;
    assert_eq!(body["status"], "Succeeded");
}

#[sqlx::test]
async fn a_retried_execution_gives_each_step_a_fresh_retry_budget(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let policy =
        json!([{"ExceptionType": ["Command.FAILED"], "MaxAttempts": 2, "IntervalSeconds": 1, "BackoffRate": 1.0}]);
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Flaky", "Type": "Command", "RetryPolicies": policy,
                "Arguments": {"Shell": format!("{}; exit 1", count_run(dir.path()))}}]),
    );
    app.create_pipeline("budget", definition).await;
    let id = app.start("budget", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    assert_eq!(runs_of(dir.path(), "Flaky"), 2);
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    assert_eq!(
        runs_of(dir.path(), "Flaky"),
        4,
        "the retry got MaxAttempts attempts again"
    );
    let step = app.step(&id, "Flaky").await;
    let numbers: Vec<i64> = step["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4], "attempt numbers are never reused");
}

#[sqlx::test]
async fn one_process_reclaiming_its_own_rescued_step_keeps_the_new_attempt_alive(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| {
        c.worker.lease_seconds = 2;
        c.worker.kill_grace_seconds = 120;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Attempt 1 holds on past SIGTERM until the test opens gate1; attempt 2
    // runs until gate2. Waiting on files is the step's own behaviour.
    let script = format!(
        "{count}; touch {d}/started-$STEPWISE_ATTEMPT; \
         if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then trap 'until [ -f {d}/gate1 ]; do sleep 0.05; done; exit 1' TERM; fi; \
         until [ -f {d}/gate$STEPWISE_ATTEMPT ]; do sleep 0.05; done",
        count = count_run(dir.path())
    );
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Long", "Type": "Command", "Arguments": {"Shell": script}}]),
    );
    app.create_pipeline("reclaim", definition).await;
    let id = app.start("reclaim", json!({})).await;
    let started = |n: u32| {
        let path = dir.path().join(format!("started-{n}"));
        async move { path.exists().then_some(()) }
    };
    wait_until(Duration::from_secs(30), || started(1))
        .await
        .expect("attempt 1 started");
    // A rescuer judged its lease lost (as after a pause of the process).
    let run: Uuid = sqlx::query_scalar("select id from step_runs where execution_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let rescued = engine::complete_attempt(&app.db, run, 1, lost(), None).await.unwrap();
    assert_eq!(rescued, Applied::AppliedQueued);
    wait_until(Duration::from_secs(30), || started(2))
        .await
        .expect("attempt 2 started");
    // Attempt 1 ends while attempt 2 runs in the same process.
    std::fs::write(dir.path().join("gate1"), "").unwrap();
    let attempt_1_ended = || async {
        let ended: Option<bool> = sqlx::query_scalar(
            "select a.ended_at is not null from step_attempts a join step_runs s on s.id = a.step_run_id \
             where s.execution_id = $1::uuid and a.attempt = 1",
        )
        .bind(&id)
        .fetch_optional(&app.db)
        .await
        .unwrap();
        ended.filter(|e| *e).map(|_| ())
    };
    wait_until(Duration::from_secs(30), attempt_1_ended)
        .await
        .expect("attempt 1 ended");
    // Wait for two renewals of attempt 2's lease after attempt 1's end; a
    // lease no longer renewed gets the step rescued (attempt 3) instead.
    for _ in 0..2 {
        let before: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("select lease_expires_at from step_runs where execution_id = $1::uuid")
                .bind(&id)
                .fetch_one(&app.db)
                .await
                .unwrap();
        let renewed = wait_until(Duration::from_secs(30), || async {
            let (attempt, lease): (i32, Option<chrono::DateTime<chrono::Utc>>) =
                sqlx::query_as("select attempt, lease_expires_at from step_runs where execution_id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
            assert_eq!(
                attempt, 2,
                "attempt 2 was rescued while it ran: its lease was not renewed"
            );
            lease.filter(|l| *l > before).map(|_| ())
        })
        .await;
        assert!(renewed.is_some(), "attempt 2's lease was never renewed");
    }
    std::fs::write(dir.path().join("gate2"), "").unwrap();
    let body = app.wait_terminal(&id).await;
    assert_eq!(body["status"], "Succeeded", "{body}");
    let step = app.step(&id, "Long").await;
    assert_eq!(step["attempt_count"], 2);
    assert_eq!(runs_of(dir.path(), "Long"), 2);
}

/// A transition holds the execution's lock while it updates that
/// execution's step rows; a claim, a leaf's success or a heartbeat that
/// waited for that lock while holding a step row would deadlock with it.
#[sqlx::test]
async fn claims_leaf_successes_and_heartbeats_never_wait_for_a_held_execution(db: PgPool) {
    let app = app_without_workers(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "L1", "Type": "Pass", "Arguments": {}}, {"Name": "L2", "Type": "Pass", "Arguments": {}}]),
    );
    app.create_pipeline("leaves", definition).await;
    let execution: Uuid = app.start("leaves", json!({})).await.parse().unwrap();
    let mut held = app.db.begin().await.unwrap();
    stepwise::store::executions::lock(&mut held, execution).await.unwrap();
    let bound = Duration::from_secs(20);
    let worker = Uuid::now_v7();
    let claimed = tokio::time::timeout(bound, steps::claim(&app.db, worker, 10, 600.0))
        .await
        .expect("the claim waited for the execution's lock")
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let applied = tokio::time::timeout(
        bound,
        engine::complete_attempt(&app.db, claimed[0].id, 1, success(), Some(b"log\0bytes")),
    )
    .await
    .expect("a leaf's success waited for the execution's lock")
    .unwrap();
    assert_eq!(applied, Applied::Applied);
    // A step row held by a transition: the heartbeat skips it, and says so.
    let other = claimed[1].id;
    sqlx::query("select 1 from step_runs where id = $1 for update")
        .bind(other)
        .execute(&mut *held)
        .await
        .unwrap();
    let beat = tokio::time::timeout(
        bound,
        stepwise::store::transitions::heartbeat(&app.db, worker, &[other], 600.0),
    )
    .await
    .expect("the heartbeat waited for a step row")
    .unwrap();
    assert!(beat.held.is_empty());
    assert_eq!(beat.busy, vec![other], "a busy row is not reported lost");
    held.commit().await.unwrap();
    let log: Vec<u8> = sqlx::query_scalar("select log from step_attempts where step_run_id = $1")
        .bind(claimed[0].id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(log, b"log\0bytes", "a log keeps every byte");
}

/// Stop and retry raced against busy workers, over and over: every answer
/// is 200 or 409, and every execution still ends.
#[sqlx::test]
async fn stop_and_retry_racing_the_workers_never_answer_5xx(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 8).await;
    let steps: Vec<Value> = (0..12)
        .map(|i| {
            let dependencies = if i >= 6 { json!([format!("S{}", i - 6)]) } else { json!([]) };
            json!({"Name": format!("S{i}"), "Type": "Command", "DependsOn": dependencies, "Arguments": {"Command": ["true"]}})
        })
        .collect();
    app.create_pipeline("busy", definition_with(json!([]), json!(steps)))
        .await;
    for _ in 0..15 {
        let id = app.start("busy", json!({})).await;
        for action in ["stop", "retry", "stop", "retry"] {
            let resp = app.post(&format!("/v1/executions/{id}/{action}"), &json!({})).await;
            assert!(
                resp.status == 200 || resp.status == 409,
                "{action}: {} {}",
                resp.status,
                resp.text
            );
            if action == "stop" && resp.status == 200 {
                app.wait_terminal(&id).await;
            }
        }
        let body = app.wait_terminal(&id).await;
        assert!(
            matches!(body["status"].as_str(), Some("Succeeded" | "Stopped")),
            "{body}"
        );
    }
}

/// A step that ends after the shutdown signal is reported, but the step it
/// makes runnable is left for another process: nothing starts after it.
#[sqlx::test]
async fn no_step_is_claimed_after_the_shutdown_signal(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Command", "Arguments": {"Shell": format!("touch {d}/a; until [ -f {d}/gate ]; do sleep 0.05; done")}},
            {"Name": "B", "Type": "Command", "DependsOn": ["A"], "Arguments": {"Shell": count_run(dir.path())}}
        ]),
    );
    app.create_pipeline("chain", definition).await;
    let id = app.start("chain", json!({})).await;
    let started = dir.path().join("a");
    wait_until(Duration::from_secs(30), || async { started.exists().then_some(()) })
        .await
        .expect("A started");
    app.begin_shutdown();
    std::fs::write(dir.path().join("gate"), "").unwrap();
    app.stop().await;
    let states: Vec<(String, String, i32)> = sqlx::query_as(
        "select step_name, status, attempt from step_runs where execution_id = $1::uuid order by position",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![("A".into(), "Succeeded".into(), 1), ("B".into(), "Starting".into(), 0)],
        "A is reported, B is left for another process"
    );
    assert_eq!(runs_of(dir.path(), "B"), 0);
}

/// A stop that meets a Callback step whose wait is beginning at that very
/// moment cancels the wait: the step must not be left Stopping with a
/// token, which nothing would ever end.
#[sqlx::test]
async fn a_stop_racing_the_start_of_a_callback_wait_cancels_it(db: PgPool) {
    let app = app_without_workers(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Approve", "Type": "Callback", "Arguments": {"OutputParameters": []}}]),
    );
    app.create_pipeline("cbstop", definition).await;
    let execution: Uuid = app.start("cbstop", json!({})).await.parse().unwrap();
    let claimed = steps::claim(&app.db, Uuid::now_v7(), 1, 600.0).await.unwrap();
    let step = &claimed[0];
    // The wait begins in a transaction that has not committed yet.
    let mut waiting = app.db.begin().await.unwrap();
    let begun = stepwise::store::transitions::begin_callback(&mut waiting, step.id, 1, Uuid::new_v4(), None, None)
        .await
        .unwrap();
    assert!(begun.is_some());
    let db = app.db.clone();
    let stop = tokio::spawn(async move { engine::stop_execution(&db, execution).await });
    wait_for_lock_waiters(&app.db, 1).await;
    waiting.commit().await.unwrap();
    stop.await.unwrap().unwrap();
    let body = app.wait_terminal(&execution.to_string()).await;
    assert_eq!(body["status"], "Stopped", "{body}");
    let step = app.step(&execution.to_string(), "Approve").await;
    assert_eq!(step["status"], "Stopped");
    assert_eq!(step["attempts"][0]["status"], "Stopped");
}

/// `Boom` and the Condition `C` (true: `Yes` if taken, `No` if not) run at
/// once.
fn condition_beside_a_failure() -> Value {
    definition_with(
        json!([]),
        json!([
            {"Name": "Boom", "Type": "Pass", "Arguments": {}},
            {"Name": "C", "Type": "Condition",
             "Arguments": {"Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}],
                           "IfSteps": [{"Name": "Yes", "Type": "Pass", "Arguments": {}},
                                       {"Name": "AfterYes", "Type": "Pass", "DependsOn": ["Yes"], "Arguments": {}}],
                           "ElseSteps": [{"Name": "No", "Type": "Pass", "Arguments": {}},
                                         {"Name": "AfterNo", "Type": "Pass", "DependsOn": ["No"], "Arguments": {}}]}}
        ]),
    )
}

async fn skip_reason(db: &PgPool, execution: Uuid, name: &str) -> (String, Option<String>) {
    sqlx::query_as("select status, skip_reason from step_runs where execution_id = $1 and step_name = $2")
        .bind(execution)
        .bind(name)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Issue 20 item 4: the failure sweep skips every unstarted step while a
/// Condition is being evaluated, its branches included (`UpstreamNotRun`);
/// the Condition then succeeds. Its untaken branch is `ConditionNotMet`
/// whichever came first, so a retry does not run it.
#[sqlx::test]
async fn a_condition_evaluated_during_the_failure_sweep_marks_its_untaken_branch(db: PgPool) {
    let app = app_without_workers(db).await;
    app.create_pipeline("cond", condition_beside_a_failure()).await;
    for failure_first in [true, false] {
        let execution: Uuid = app.start("cond", json!({})).await.parse().unwrap();
        let claimed = steps::claim(&app.db, Uuid::now_v7(), 10, 600.0).await.unwrap();
        let id_of = |name: &str| claimed.iter().find(|s| s.step_name == name).unwrap().id;
        assert_eq!(claimed.len(), 2, "Boom and C run at once");
        let (boom, condition) = (id_of("Boom"), id_of("C"));
        let fail = || StepOutcome::failed("Command.FAILED", "boom");
        let took_if = || StepOutcome::Succeeded {
            properties: json!({"Outcome": true}),
            metadata: json!({"condition": {"outcome": true}}),
            exit_code: None,
            key: None,
        };
        // The racing order, one after the other: the Condition is claimed
        // (being evaluated) when the failure sweep runs, or not yet done.
        let order = if failure_first {
            [(boom, fail()), (condition, took_if())]
        } else {
            [(condition, took_if()), (boom, fail())]
        };
        for (id, outcome) in order {
            let applied = engine::complete_attempt(&app.db, id, 1, outcome, None).await.unwrap();
            assert_ne!(applied, Applied::Stale);
        }
        let done = app.wait_terminal(&execution.to_string()).await;
        assert_eq!(done["status"], "Failed", "{done}");
        let why = format!("failure first: {failure_first}");
        assert_eq!(
            skip_reason(&app.db, execution, "No").await,
            ("Skipped".to_string(), Some("ConditionNotMet".to_string())),
            "{why}"
        );
        assert_eq!(
            skip_reason(&app.db, execution, "AfterNo").await,
            ("Skipped".to_string(), Some("ConditionNotMet".to_string())),
            "{why}: every step of the untaken branch"
        );
        assert_eq!(
            skip_reason(&app.db, execution, "Yes").await,
            ("Skipped".to_string(), Some("UpstreamNotRun".to_string())),
            "{why}"
        );
        let listed = app.step(&execution.to_string(), "No").await;
        assert_eq!(listed["skip_reason"], "ConditionNotMet", "{why}");

        // A retry runs the failed step and the taken branch, never the other.
        app.post(&format!("/v1/executions/{execution}/retry"), &json!({}))
            .await
            .expect(200);
        assert_eq!(
            skip_reason(&app.db, execution, "No").await.1.as_deref(),
            Some("ConditionNotMet"),
            "{why}"
        );
        assert_eq!(skip_reason(&app.db, execution, "AfterNo").await.0, "Skipped", "{why}");
        let (yes, _) = skip_reason(&app.db, execution, "Yes").await;
        assert!(yes == "Starting" || yes == "Pending", "{why}: Yes is {yes}");
        app.post(&format!("/v1/executions/{execution}/stop"), &json!({}))
            .await
            .expect(200);
        app.wait_terminal(&execution.to_string()).await;
    }
    app.stop().await;
}
