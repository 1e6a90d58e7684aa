//! `TestApp`: spawns the real application on a free port over the test's
//! database and talks to it over HTTP. Every JSON response is checked
//! against openapi.yaml, so the whole suite proves the document right.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;
use stepwise::{app::App, config::Config};
use tokio_util::sync::CancellationToken;

use crate::openapi;

/// The admin token of every server a test starts (`auth.admin_token`).
pub const TEST_TOKEN: &str = "sw_test_admin_token_not_a_secret_0123456789";

/// A client that sends `TEST_TOKEN` with every request.
pub fn authed_client(timeout: Duration) -> reqwest::Client {
    client_with_token(TEST_TOKEN, timeout)
}

/// A client that sends `token` with every request.
pub fn client_with_token(token: &str, timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a token fits a header"),
    );
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .unwrap()
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: PgPool,
    /// Held so the directory lives as long as the app.
    #[allow(dead_code)]
    pub data_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub content_type: String,
}

impl TestApp {
    pub async fn spawn(db: PgPool) -> TestApp {
        TestApp::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: PgPool, configure: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::spawn_with_pool(db, 20, configure).await
    }

    /// The app over a pool of `max_connections` (one is its LISTEN
    /// connection), whose requests wait at most 3 s for a connection.
    pub async fn spawn_with_pool(db: PgPool, max_connections: u32, configure: impl FnOnce(&mut Config)) -> TestApp {
        // RUST_LOG=stepwise=debug shows the server's logs for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        // The pool #[sqlx::test] hands out is small (5 connections); the app
        // gets its own, sized like production, on the same test database.
        let options = db.connect_options().as_ref().clone();
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(if max_connections < 20 { 3 } else { 30 }))
            .connect_with(options)
            .await
            .expect("test pool connects");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = data_dir.path().to_path_buf();
        // The app runs inside this test binary: steps are supervised by the real one.
        config.worker.supervisor_program = env!("CARGO_BIN_EXE_stepwise").into();
        config.auth.admin_token = TEST_TOKEN.into();
        // Tests' webhook receivers listen on loopback, which is refused by default.
        config.callbacks.webhook_allow = vec!["127.0.0.0/8".into()];
        configure(&mut config);
        let app = App::build_with_pool(config, db.clone()).await.expect("app builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        TestApp {
            base,
            client: authed_client(Duration::from_secs(120)),
            db,
            data_dir,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Signals shutdown, as SIGTERM does; `stop` then waits for the drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops the app and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("app stops in time")
                .expect("app task joins")
                .expect("app exits cleanly");
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = self.raw(request).await;
        openapi::check_response(method.as_str(), path, &resp);
        resp
    }

    /// Sends a request built by the caller (for malformed bodies and headers).
    pub async fn raw(&self, request: reqwest::RequestBuilder) -> Resp {
        let response = request.send().await.expect("request is sent");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let text = response.text().await.expect("body is read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            content_type,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Resp {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        &self.body
    }

    /// Asserts an error response with `status` and `code`, returning its message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        self.expect(status);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.text);
        self.body["error"]["message"]
            .as_str()
            .expect("message is a string")
            .to_string()
    }

    /// The detail paths of an error response.
    pub fn detail_paths(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .map(|d| d.iter().map(|i| i["path"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }
}

/// Test helpers for pipelines and executions.
impl TestApp {
    pub async fn create_pipeline(&self, name: &str, definition: Value) -> Value {
        let resp = self
            .post(
                "/v1/pipelines",
                &serde_json::json!({"name": name, "definition": definition}),
            )
            .await;
        resp.expect(201).clone()
    }

    /// Starts an execution and returns its id.
    pub async fn start(&self, pipeline: &str, body: Value) -> String {
        let resp = self.post(&format!("/v1/pipelines/{pipeline}/executions"), &body).await;
        resp.expect(201)["execution_id"].as_str().unwrap().to_string()
    }

    /// Waits (long-polling) until the execution has ended.
    pub async fn wait_terminal(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let resp = self.get(&format!("/v1/executions/{id}?wait_seconds=30")).await;
            let body = resp.expect(200).clone();
            if matches!(body["status"].as_str(), Some("Succeeded" | "Failed" | "Stopped")) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "execution {id} did not end: {body}"
            );
        }
    }

    /// Every step of the execution, following `next_token` page by page.
    pub async fn steps(&self, id: &str) -> Vec<Value> {
        let mut steps = Vec::new();
        let mut path = format!("/v1/executions/{id}/steps?limit=1000");
        loop {
            let resp = self.get(&path).await;
            let page = resp.expect(200);
            steps.extend(page["steps"].as_array().unwrap().iter().cloned());
            match page["next_token"].as_str() {
                Some(token) => path = format!("/v1/executions/{id}/steps?limit=1000&next_token={token}"),
                None => return steps,
            }
        }
    }

    pub async fn step(&self, id: &str, name: &str) -> Value {
        self.get(&format!("/v1/executions/{id}/steps/{name}"))
            .await
            .expect(200)
            .clone()
    }

    /// Waits until `check` holds for the step, polling its state.
    pub async fn wait_step(&self, id: &str, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(60), || async {
            let step = self.step(id, name).await;
            check(&step).then_some(step)
        })
        .await
        .unwrap_or_else(|| panic!("step {name} of {id} never reached the expected state"))
    }
}

/// Polls `probe` until it yields a value or `limit` passes. This waits on a
/// condition, not for a fixed time.
pub async fn wait_until<T, F, Fut>(limit: Duration, probe: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A definition document around `steps` and `parameters`.
pub fn definition_with(parameters: Value, steps: Value) -> Value {
    serde_json::json!({"Version": "2020-12-01", "Parameters": parameters, "Steps": steps})
}

/// Lines a side-effect counter file holds: how often a step really ran.
pub fn runs_of(dir: &std::path::Path, step: &str) -> usize {
    std::fs::read_to_string(dir.join(step))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A shell snippet appending one line to the counter of the running step.
pub fn count_run(dir: &std::path::Path) -> String {
    format!("echo \"$STEPWISE_ATTEMPT\" >> {}/$STEPWISE_STEP_NAME", dir.display())
}
