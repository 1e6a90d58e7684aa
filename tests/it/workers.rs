//! The worker pool under failure: lost workers, several pools on one
//! database, graceful drain, and a worker process killed mid-step.

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise::{
    config::Config,
    engine::{self, Applied, StepOutcome},
    notify::Notifier,
    store::steps,
    worker::WorkerPool,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    helpers::{count_run, definition_with, runs_of, wait_until, TestApp},
    procs::database_url,
};

/// A worker pool of the test's own, as if in another process.
fn spawn_pool(app: &TestApp, configure: impl FnOnce(&mut Config)) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = Config::defaults();
    config.data_dir = app.data_dir.path().to_path_buf();
    config.worker.supervisor_program = env!("CARGO_BIN_EXE_stepwise").into();
    configure(&mut config);
    let notifier = Notifier::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(notifier.clone().run(app.db.clone(), shutdown.clone()));
    // The same data directory, so the same secrets key file as the app's.
    let keyring = stepwise::secrets::Keyring::load("", &config.data_dir).expect("the app's secrets key");
    let pool = WorkerPool::new(app.db.clone(), Arc::new(config), notifier, keyring);
    (shutdown.clone(), tokio::spawn(pool.run(shutdown)))
}

#[sqlx::test]
async fn a_lost_worker_is_rescued_and_its_late_result_dropped(db: PgPool) {
    // The app runs maintenance (the rescuer) but no workers of its own.
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Work", "Type": "Command", "Arguments": {"Shell": count_run(dir.path())}}]),
    );
    app.create_pipeline("lost", definition).await;
    let id = app.start("lost", json!({})).await;

    // A worker claims the step, then vanishes without reporting.
    let ghost = Uuid::now_v7();
    let claimed = wait_until(Duration::from_secs(10), || async {
        let c = steps::claim(&app.db, ghost, 1, 3600.0).await.unwrap();
        (!c.is_empty()).then_some(c)
    })
    .await
    .unwrap();
    let step_id = claimed[0].id;
    assert_eq!(claimed[0].attempt, 1);
    sqlx::query("update step_runs set lease_expires_at = now() - interval '1 second' where id = $1")
        .bind(step_id)
        .execute(&app.db)
        .await
        .unwrap();

    // The rescuer records the lost attempt and queues the step again.
    let step = app.wait_step(&id, "Work", |s| s["status"] == "Starting").await;
    assert_eq!(step["attempts"][0]["status"], "Failed");
    assert_eq!(step["attempts"][0]["error_type"], "Step.SERVICE_FAULT");

    // The lost worker's late result is dropped.
    let late = StepOutcome::Succeeded {
        properties: json!({"Outputs": {"ghost": true}}),
        metadata: json!({}),
        exit_code: Some(0),
        key: None,
    };
    assert_eq!(
        engine::complete_attempt(&app.db, step_id, 1, late, None).await.unwrap(),
        Applied::Stale
    );

    // A live worker runs attempt 2.
    let (stop, pool) = spawn_pool(&app, |_| {});
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded");
    let step = app.step(&id, "Work").await;
    assert_eq!(step["attempt_count"], 2);
    assert_eq!(
        step["properties"]["Outputs"],
        json!({}),
        "the stale result left no trace"
    );
    assert_eq!(runs_of(dir.path(), "Work"), 1);
    stop.cancel();
    pool.await.unwrap();
}

#[sqlx::test]
async fn two_pools_run_every_step_of_a_wide_execution_exactly_once(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 8).await;
    let dir = tempfile::tempdir().unwrap();
    let steps: Vec<Value> = (0..300)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Command", "Arguments": {"Shell": count_run(dir.path())}}))
        .collect();
    app.create_pipeline("wide", definition_with(json!([]), Value::Array(steps)))
        .await;
    let (stop, pool) = spawn_pool(&app, |c| c.worker.concurrency = 8);
    let id = app.start("wide", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    for i in 0..300 {
        assert_eq!(runs_of(dir.path(), &format!("S{i:03}")), 1, "step S{i:03}");
    }
    let attempts: i64 = sqlx::query_scalar("select count(*) from step_attempts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(attempts, 300);
    let workers: i64 = sqlx::query_scalar("select count(distinct worker_id) from step_attempts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(workers, 2, "both pools took part");
    stop.cancel();
    pool.await.unwrap();
}

#[sqlx::test]
async fn shutdown_lets_running_steps_finish(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Busy", "Type": "Command", "Arguments": {"Shell": format!("touch {}; sleep 1; echo finished", marker.display())}}]),
    );
    app.create_pipeline("drain", definition).await;
    let id = app.start("drain", json!({})).await;
    wait_until(Duration::from_secs(30), || async { marker.exists().then_some(()) })
        .await
        .expect("the step started");
    let db = app.db.clone();
    app.stop().await;
    let status: String = sqlx::query_scalar("select status from executions where id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        status, "Succeeded",
        "the running step finished before the process exited"
    );
}

#[sqlx::test]
async fn shutdown_releases_steps_that_outlive_the_grace_period(db: PgPool) {
    // One data directory for both processes, as on a shared volume.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let app = TestApp::spawn_with(db.clone(), |c| {
        c.data_dir = data_dir.clone();
        c.worker.shutdown_grace_seconds = 0;
        c.worker.kill_grace_seconds = 1;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The first attempt leaves a partial artifact and a stale outputs file,
    // then is interrupted; the next must see neither.
    let script = format!(
        "echo \"attempt $STEPWISE_ATTEMPT\"; ls \"$STEPWISE_ARTIFACTS\" > {d}/seen-$STEPWISE_ATTEMPT; \
         if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then touch \"$STEPWISE_ARTIFACTS/partial\"; \
           echo '{{\"by\": 1}}' > \"$STEPWISE_OUTPUTS\"; touch {d}/running; sleep 60; fi; \
         echo \"{{\\\"by\\\": $STEPWISE_ATTEMPT}}\" > \"$STEPWISE_OUTPUTS\"",
        d = dir.path().display()
    );
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Long", "Type": "Command", "Arguments": {"Shell": script}}]),
    );
    app.create_pipeline("release", definition).await;
    let id = app.start("release", json!({})).await;
    let marker = dir.path().join("running");
    wait_until(Duration::from_secs(30), || async { marker.exists().then_some(()) })
        .await
        .expect("the step started");
    app.stop().await;
    let (status, attempt): (String, i32) =
        sqlx::query_as("select status, attempt from step_runs where execution_id = $1::uuid")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(status, "Starting", "released for another worker");
    assert_eq!(attempt, 1, "the interrupted attempt keeps its number");
    let (attempt_status, error_type, reason): (String, String, String) = sqlx::query_as(
        "select a.status, a.error_type, a.failure_reason from step_attempts a \
                        join step_runs s on s.id = a.step_run_id where s.execution_id = $1::uuid and a.attempt = 1",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (attempt_status.as_str(), error_type.as_str()),
        ("Failed", "Step.SERVICE_FAULT")
    );
    assert!(reason.contains("interrupted by shutdown"), "{reason}");

    // Another process takes it as attempt 2, in directories of its own.
    let app = TestApp::spawn_with(db, |c| c.data_dir = data_dir).await;
    let body = app.wait_terminal(&id).await;
    assert_eq!(body["status"], "Succeeded", "{body}");
    let step = app.step(&id, "Long").await;
    assert_eq!(step["attempt_count"], 2);
    assert_eq!(
        step["properties"]["Outputs"]["by"], 2,
        "not the interrupted attempt's outputs"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("seen-2")).unwrap(),
        "",
        "no partial artifacts"
    );
    let attempts: Vec<&str> = step["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        attempts,
        vec!["Failed", "Succeeded"],
        "the interrupted attempt stays in the history"
    );
    let first_log = app.get(&format!("/v1/executions/{id}/steps/Long/logs?attempt=1")).await;
    assert_eq!(
        first_log.text.trim(),
        "attempt 1",
        "the interrupted attempt keeps its own log"
    );
}

#[sqlx::test]
async fn a_worker_process_killed_mid_step_is_replaced_and_the_execution_finishes(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 2;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{}; if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then echo $$ > {d}/pid; sleep 60; fi",
        count_run(dir.path()),
        d = dir.path().display()
    );
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Crashy", "Type": "Command", "Arguments": {"Shell": script}},
            {"Name": "After", "Type": "Pass", "DependsOn": ["Crashy"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("crash", definition).await;
    let id = app.start("crash", json!({})).await;
    let url = database_url(&app.db).await;
    let spawn_worker = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .arg("worker")
            .env("STEPWISE_DATABASE_URL", &url)
            .env("STEPWISE_DATA_DIR", app.data_dir.path())
            .env("STEPWISE_WORKER__LEASE_SECONDS", "2")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("the stepwise binary starts")
    };
    let mut first = spawn_worker();
    let pid_file = dir.path().join("pid");
    wait_until(Duration::from_secs(60), || async {
        std::fs::read_to_string(&pid_file).ok().filter(|s| s.ends_with('\n'))
    })
    .await
    .expect("the first worker started the step");
    first.start_kill().unwrap(); // SIGKILL: no drain, no report
    first.wait().await.unwrap();
    // The orphaned step process is in its own group; end it like a reboot would.
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);

    let mut second = spawn_worker();
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let step = app.step(&id, "Crashy").await;
    assert_eq!(step["attempts"][0]["error_type"], "Step.SERVICE_FAULT");
    assert_eq!(step["attempts"][1]["status"], "Succeeded");
    assert_eq!(runs_of(dir.path(), "Crashy"), 2);
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}

#[sqlx::test]
async fn a_step_that_panics_fails_its_attempt_and_frees_its_lease(db: PgPool) {
    // The test-only fault point: Boom's first attempt panics in the worker's task.
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 1;
        c.worker.fault_panic_step = Some("Boom".into());
    })
    .await;
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Boom", "Type": "Pass", "Arguments": {"Outputs": {"x": 1}}},
            {"Name": "After", "Type": "Pass", "DependsOn": ["Boom"], "Arguments": {}}
        ]),
    );
    app.create_pipeline("panics", definition).await;
    let id = app.start("panics", json!({})).await;
    let execution = tokio::time::timeout(Duration::from_secs(60), app.wait_terminal(&id))
        .await
        .expect("the panicking attempt ended and the step was retried");
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let step = app.step(&id, "Boom").await;
    let first = &step["attempts"][0];
    assert_eq!(first["status"], "Failed", "{step}");
    assert_eq!(first["error_type"], "Step.SERVICE_FAULT", "{step}");
    let reason = first["failure_reason"].as_str().unwrap_or("");
    assert!(reason.contains("injected fault: step Boom panics"), "{reason}");
    assert_eq!(step["attempts"][1]["status"], "Succeeded", "{step}");
    // The worker lives on: the one slot it has runs the next execution too.
    let again = app.start("panics", json!({})).await;
    let execution = tokio::time::timeout(Duration::from_secs(60), app.wait_terminal(&again))
        .await
        .expect("the worker still runs steps");
    assert_eq!(execution["status"], "Succeeded", "{execution}");
}

#[sqlx::test]
async fn a_step_stopping_at_the_end_of_the_grace_period_is_reported_at_once(db: PgPool) {
    // The app serves the API only; the steps run on a pool of the test's own
    // that hears no notices (its notifier never listens) and heartbeats only
    // every 200 s: the stop reaches it by neither before its shutdown.
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 0).await;
    let mut config = Config::defaults();
    config.data_dir = app.data_dir.path().to_path_buf();
    config.worker.supervisor_program = env!("CARGO_BIN_EXE_stepwise").into();
    config.worker.lease_seconds = 600;
    config.worker.poll_interval_ms = 100;
    config.worker.shutdown_grace_seconds = 0;
    config.worker.kill_grace_seconds = 1;
    let keyring = stepwise::secrets::Keyring::load("", &config.data_dir).expect("the app's secrets key");
    let pool = WorkerPool::new(app.db.clone(), Arc::new(config), Notifier::new(), keyring);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(pool.run(shutdown.clone()));

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Long", "Type": "Command", "Arguments": {"Shell": format!("touch {}; sleep 120", marker.display())}}]),
    );
    app.create_pipeline("stopping", definition).await;
    let id = app.start("stopping", json!({})).await;
    wait_until(Duration::from_secs(30), || async { marker.exists().then_some(()) })
        .await
        .expect("the step started");
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    assert_eq!(app.step(&id, "Long").await["status"], "Stopping");

    // The grace period is over at once: the step is ended and, since its
    // stop was asked for, reported Stopped rather than left to its lease.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the pool drains")
        .unwrap();
    let step = app.step(&id, "Long").await;
    assert_eq!(step["status"], "Stopped", "{step}");
    let lease: Option<Uuid> = sqlx::query_scalar("select lease_owner from step_runs where execution_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(lease, None, "the lease is freed");
    let execution = tokio::time::timeout(Duration::from_secs(10), app.wait_terminal(&id))
        .await
        .expect("the execution ends without waiting for the lease");
    assert_eq!(execution["status"], "Stopped", "{execution}");
}

#[sqlx::test]
async fn notices_that_announce_no_work_do_not_wake_the_claim_loop(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 0).await;
    let mut config = Config::defaults();
    config.data_dir = app.data_dir.path().to_path_buf();
    config.worker.supervisor_program = env!("CARGO_BIN_EXE_stepwise").into();
    config.worker.concurrency = 2;
    // Neither polling nor the heartbeat acts within the test: only notices.
    config.worker.poll_interval_ms = 3_600_000;
    config.worker.lease_seconds = 600;
    let notifier = Notifier::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(notifier.clone().run(app.db.clone(), shutdown.clone()));
    let keyring = stepwise::secrets::Keyring::load("", &config.data_dir).expect("the app's secrets key");
    let pool = WorkerPool::new(app.db.clone(), Arc::new(config), notifier.clone(), keyring);
    let running = tokio::spawn(pool.clone().run(shutdown.clone()));

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("running");
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Long", "Type": "Command", "Arguments": {"Shell": format!("touch {}; sleep 120", marker.display())}}]),
    );
    app.create_pipeline("quiet", definition).await;
    let id = app.start("quiet", json!({})).await;
    wait_until(Duration::from_secs(30), || async { marker.exists().then_some(()) })
        .await
        .expect("the step started");
    let before = pool.claims();

    // A thousand notices of transitions and logs, then a stop: the loop
    // handles notices in order, so once the step is stopped it has seen
    // them all.
    for _ in 0..500 {
        notifier.publish_local(stepwise::notify::EXECUTION, &id);
        notifier.publish_local(stepwise::notify::LOG, &id);
    }
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let execution = tokio::time::timeout(Duration::from_secs(60), app.wait_terminal(&id))
        .await
        .expect("the stop reached the pool");
    assert_eq!(execution["status"], "Stopped", "{execution}");
    let claims = pool.claims() - before;
    assert!(claims <= 5, "{claims} claims for notices that announced no work");
    shutdown.cancel();
    running.await.unwrap();
}

/// A TCP proxy to the test's PostgreSQL server that the test can cut: every
/// connection through it ends and new ones are refused, as when the
/// database becomes unreachable for one machine.
struct CutProxy {
    port: u16,
    cut: CancellationToken,
}

async fn cut_proxy(target: String) -> CutProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = CancellationToken::new();
    let cutting = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = cutting.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            let cutting = cutting.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = cutting.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
    CutProxy { port, cut }
}

#[sqlx::test]
async fn a_worker_that_cannot_renew_a_lease_ends_the_step_before_it_is_rescued(db: PgPool) {
    // The app rescues expired leases (every second) but runs no steps.
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 3;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 runs until ended; attempt 2 records whether attempt 1's
    // process was still alive when it began.
    let script = format!(
        "{count}; if [ \"$STEPWISE_ATTEMPT\" = 1 ]; then echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid; exec sleep 120; fi; \
         if kill -0 $(cat {d}/pid) 2>/dev/null; then touch {d}/overlap; fi",
        count = count_run(dir.path()),
        d = dir.path().display()
    );
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Work", "Type": "Command", "Arguments": {"Shell": script}}]),
    );
    app.create_pipeline("unrenewed", definition).await;

    // Worker A reaches the database through a proxy the test cuts.
    let options = app.db.connect_options().as_ref().clone();
    let proxy = cut_proxy(format!("{}:{}", options.get_host(), options.get_port())).await;
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.port(proxy.port))
        .await
        .unwrap();
    let mut config = Config::defaults();
    config.data_dir = app.data_dir.path().to_path_buf();
    config.worker.supervisor_program = env!("CARGO_BIN_EXE_stepwise").into();
    config.worker.lease_seconds = 3;
    config.worker.kill_grace_seconds = 1;
    config.worker.poll_interval_ms = 100;
    let keyring = stepwise::secrets::Keyring::load("", &config.data_dir).expect("the app's secrets key");
    let pool_a = WorkerPool::new(through_proxy, Arc::new(config), Notifier::new(), keyring);
    let stop_a = CancellationToken::new();
    let worker_a = tokio::spawn(pool_a.run(stop_a.clone()));

    let id = app.start("unrenewed", json!({})).await;
    let pid_file = dir.path().join("pid");
    wait_until(Duration::from_secs(60), || async { pid_file.exists().then_some(()) })
        .await
        .expect("worker A started attempt 1");
    proxy.cut.cancel();

    // Worker B, on a working connection, takes the step once it is rescued.
    let (stop_b, worker_b) = spawn_pool(&app, |_| {});
    let execution = tokio::time::timeout(Duration::from_secs(60), app.wait_terminal(&id))
        .await
        .expect("the step was rescued and run again");
    assert_eq!(execution["status"], "Succeeded", "{execution}");
    let step = app.step(&id, "Work").await;
    assert_eq!(step["attempts"][0]["error_type"], "Step.SERVICE_FAULT", "{step}");
    assert_eq!(runs_of(dir.path(), "Work"), 2);
    assert!(
        !dir.path().join("overlap").exists(),
        "attempt 1's process still ran when attempt 2 began"
    );
    worker_a.abort();
    stop_b.cancel();
    worker_b.await.unwrap();
}

#[sqlx::test]
async fn claims_are_fair_across_executions(db: PgPool) {
    // No worker of the app's own: the test claims as a worker of concurrency 1.
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 0).await;
    let wide: Vec<Value> = (0..50)
        .map(|i| json!({"Name": format!("S{i:02}"), "Type": "Pass", "Arguments": {}}))
        .collect();
    app.create_pipeline("many", definition_with(json!([]), Value::Array(wide)))
        .await;
    app.create_pipeline(
        "one",
        definition_with(json!([]), json!([{"Name": "Only", "Type": "Pass", "Arguments": {}}])),
    )
    .await;
    // Execution A's fifty runnable steps are queued first, then B's one.
    let a = app.start("many", json!({})).await;
    let b = app.start("one", json!({})).await;
    let queued: i64 = sqlx::query_scalar("select count(*) from step_runs where status = 'Starting'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 51);
    let worker = Uuid::now_v7();
    let mut taken = Vec::new();
    for _ in 0..2 {
        let claimed = steps::claim(&app.db, worker, 1, 600.0).await.unwrap();
        assert_eq!(claimed.len(), 1);
        taken.push((claimed[0].execution_id.to_string(), claimed[0].step_name.clone()));
        // Done before the next claim, as a worker of concurrency 1 would.
        let done = StepOutcome::Succeeded {
            properties: json!({}),
            metadata: json!({}),
            exit_code: None,
            key: None,
        };
        engine::complete_attempt(&app.db, claimed[0].id, claimed[0].attempt, done, None)
            .await
            .unwrap();
    }
    assert!(
        taken.contains(&(b.clone(), "Only".to_string())),
        "B's only step waited behind A's ({a}): {taken:?}"
    );
}
