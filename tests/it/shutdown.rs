//! Shutdown of a real `stepwise serve` process: SIGTERM ends it within its
//! grace period whatever clients are connected (an event stream gets a final
//! `shutdown` event and closes, a long poll answers at once with the current
//! state), and a second signal exits at once.

use std::time::Duration;

use nix::{sys::signal, unistd::Pid};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    helpers::{definition_with, wait_until},
    procs::{database_url, StepwiseProcess},
};

/// A pipeline whose only step waits for a callback: its execution stays
/// Executing while no step process runs. Returns the execution's id.
async fn start_waiting_execution(client: &reqwest::Client, base: &str) -> String {
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Approve", "Type": "Callback", "Arguments": {}}]),
    );
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "waits", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let resp = client
        .post(format!("{base}/v1/pipelines/waits/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn send_signal(process: &StepwiseProcess, which: signal::Signal) {
    let pid = process.child.id().expect("the process runs") as i32;
    signal::kill(Pid::from_raw(pid), which).unwrap();
}

/// Sends a long poll and returns once the server is handling it: the test
/// holds the `pipelines` table locked until one of the server's backends
/// waits on it with the describe query, then lets it through.
async fn long_poll_in_progress(
    db: &PgPool,
    client: &reqwest::Client,
    base: &str,
    id: &str,
) -> tokio::task::JoinHandle<reqwest::Result<(u16, Value)>> {
    let mut lock = db.begin().await.unwrap();
    sqlx::query("lock table pipelines in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let request = client.get(format!("{base}/v1/executions/{id}?wait_seconds=300"));
    let poll = tokio::spawn(async move {
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json::<Value>().await?))
    });
    let waiting = wait_until(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and wait_event_type = 'Lock' and query like '%from executions e join pipelines p%where e.id = $1'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the long poll never reached the database");
    lock.commit().await.unwrap();
    poll
}

#[sqlx::test]
async fn sigterm_ends_event_streams_and_long_polls_at_once(db: PgPool) {
    let url = database_url(&db).await;
    let data = tempfile::tempdir().unwrap();
    let mut server = StepwiseProcess::serve(&url, data.path(), &[]).await;
    let base = server.base_url.clone().unwrap();
    let client = crate::helpers::authed_client(std::time::Duration::from_secs(120));
    let id = start_waiting_execution(&client, &base).await;
    let poll = long_poll_in_progress(&db, &client, &base, &id).await;
    // The event stream is open once its first event has arrived.
    let mut stream = client
        .get(format!("{base}/v1/executions/{id}/events"))
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while !received.contains("event: execution") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("the first event arrives")
            .unwrap()
            .expect("the stream is open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }

    let signalled = tokio::time::Instant::now();
    send_signal(&server, signal::Signal::SIGTERM);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll answers at once")
        .unwrap()
        .expect("the long poll gets a response");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Executing", "{body}");
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.chunk().await.expect("the stream ends cleanly") {
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event stream closes");
    assert!(received.contains("event: shutdown"), "no final event: {received}");
    let exit = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the process exits within the bound")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[sqlx::test]
async fn a_second_signal_exits_at_once(db: PgPool) {
    let url = database_url(&db).await;
    let data = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    // Running steps would be given five minutes to finish.
    let env = [("STEPWISE_WORKER__SHUTDOWN_GRACE_SECONDS", "300")];
    let mut server = StepwiseProcess::serve(&url, data.path(), &env).await;
    let base = server.base_url.clone().unwrap();
    let client = crate::helpers::authed_client(std::time::Duration::from_secs(120));
    let pid_file = marks.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 120", pid_file.display());
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Long", "Type": "Command", "Arguments": {"Command": ["sh", "-c", script]}}]),
    );
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "long", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .post(format!("{base}/v1/pipelines/long/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let step_pid = wait_until(Duration::from_secs(60), || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    })
    .await
    .expect("the step runs");

    send_signal(&server, signal::Signal::SIGTERM);
    // The first signal was taken once the listener is closed.
    let address = base.trim_start_matches("http://").to_string();
    let closed = wait_until(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&address).await.is_err().then_some(())
    })
    .await;
    assert!(closed.is_some(), "the server kept listening after SIGTERM");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the step's grace period ended early"
    );

    send_signal(&server, signal::Signal::SIGTERM);
    let exit = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("the second signal ends the process at once")
        .unwrap();
    assert!(!exit.success(), "an interrupted drain is not a clean exit: {exit:?}");
    // The step's process is not this test's to leave behind.
    let _ = signal::kill(Pid::from_raw(step_pid), signal::Signal::SIGKILL);
}
