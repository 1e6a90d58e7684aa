//! Bounded resources of the API server: an idle keep-alive connection is
//! closed after `api.idle_timeout_seconds` (a long poll is not), beyond
//! `api.max_connections` new connections wait for a free slot instead of
//! being served, and parsed definitions are kept up to
//! `api.definition_cache_bytes`, however many versions are used.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    helpers::{definition_with, TestApp},
    procs::{database_url, StepwiseProcess},
};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Sends a keep-alive request for `path`.
async fn send_request(stream: &mut TcpStream, path: &str) {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        crate::helpers::TEST_TOKEN
    );
    stream.write_all(head.as_bytes()).await.unwrap();
}

/// Reads one response (headers and a Content-Length body); returns its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a whole response");
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buffer).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .expect("a content-length");
        if body.len() >= length {
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
    }
}

/// Whether the server closes `stream` (end of file) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[sqlx::test]
async fn idle_keep_alive_connections_are_closed_but_long_polls_are_not(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.api.idle_timeout_seconds = 1).await;
    let mut idle = connect(&app).await;
    send_request(&mut idle, "/healthz").await;
    assert_eq!(read_response(&mut idle).await, 200);
    // The connection is kept alive, then closed by the server once idle.
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).await,
        "an idle connection stayed open"
    );

    // A request that takes longer than the idle timeout is answered.
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Approve", "Type": "Callback", "Arguments": {}}]),
    );
    app.create_pipeline("waits", definition).await;
    let id = app.start("waits", json!({})).await;
    let mut polling = connect(&app).await;
    send_request(&mut polling, &format!("/v1/executions/{id}?wait_seconds=3")).await;
    assert_eq!(read_response(&mut polling).await, 200);
}

#[sqlx::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot(db: PgPool) {
    const CAP: usize = 8;
    let app = TestApp::spawn_with(db, |c| {
        c.api.max_connections = CAP;
        c.api.idle_timeout_seconds = 3600;
    })
    .await;
    // CAP connections served once each, then left idle: every slot is taken.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = connect(&app).await;
        send_request(&mut stream, "/healthz").await;
        assert_eq!(read_response(&mut stream).await, 200);
        held.push(stream);
    }
    // One more is not served while they stay open (it waits, it is not refused)...
    let mut waiting = connect(&app).await;
    send_request(&mut waiting, "/healthz").await;
    let early = tokio::time::timeout(Duration::from_secs(2), read_response(&mut waiting)).await;
    assert!(early.is_err(), "a connection beyond the cap was served");
    // ...and is served as soon as one of them closes.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(30), read_response(&mut waiting))
        .await
        .expect("the waiting connection is served once a slot is free");
    assert_eq!(status, 200);
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// Eight versions of a 10,000-step pipeline, each planned once (a plan
/// loads the parsed definition through the cache like a start, without
/// running anything). Each parsed version takes about 40 MiB; the cache
/// (64 MiB by default) keeps one, so the server's memory does not grow by
/// the 280 MiB that keeping all of them would take.
#[sqlx::test]
async fn parsed_definitions_are_bounded_by_bytes_not_by_versions(db: PgPool) {
    let url = database_url(&db).await;
    let data = tempfile::tempdir().unwrap();
    // One malloc arena, so memory freed by one request is reused by the next
    // instead of being counted again in another thread's arena.
    let server = StepwiseProcess::serve(&url, data.path(), &[("MALLOC_ARENA_MAX", "1")]).await;
    let pid = server.child.id().unwrap();
    let base = server.base_url.clone().unwrap();
    let client = crate::helpers::authed_client(std::time::Duration::from_secs(120));
    let steps: Vec<Value> = (0..10_000)
        .map(|i| json!({"Name": format!("S{i:05}"), "Type": "Pass", "Arguments": {"i": i}}))
        .collect();
    let definition = definition_with(json!([]), Value::Array(steps));
    let plan = |version: usize| {
        let request = client
            .post(format!("{base}/v1/pipelines/big/executions/plan"))
            .json(&json!({"pipeline_version": version}));
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["steps"].as_array().unwrap().len(), 10_000);
        }
    };
    let resp = client
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "big", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    plan(1).await;
    let baseline = rss_mib(pid);
    for version in 2..=8 {
        let resp = client
            .put(format!("{base}/v1/pipelines/big"))
            .json(&json!({"definition": definition}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        plan(version).await;
    }
    let grown = rss_mib(pid).saturating_sub(baseline);
    eprintln!("resident memory: {baseline} MiB after one version, +{grown} MiB after eight");
    assert!(
        grown < 150,
        "the server kept {grown} MiB more after seven more versions"
    );
}
