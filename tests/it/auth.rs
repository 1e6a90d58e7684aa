//! Authentication and the request guard: the authorization matrix over
//! every route and role, browser-shaped requests refused with and without
//! authentication, the first admin token, revocation at once, the CLI, and
//! the refusal to start open on a non-loopback address.

use std::{collections::BTreeSet, os::unix::fs::PermissionsExt, time::Duration};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise::api::auth::{Access, POLICY};

use crate::{
    helpers::{client_with_token, definition_with, TestApp, TEST_TOKEN},
    openapi,
    procs::database_url,
};

fn pass_pipeline() -> Value {
    definition_with(json!([]), json!([{"Name": "A", "Type": "Pass", "Arguments": {}}]))
}

/// Creates a token with `role` over the API and returns its text.
async fn token_with_role(app: &TestApp, name: &str, role: &str) -> String {
    let created = app.post("/v1/tokens", &json!({"name": name, "role": role})).await;
    let body = created.expect(201);
    assert_eq!(body["role"], role);
    body["token"]
        .as_str()
        .expect("the token is shown at creation")
        .to_string()
}

/// A concrete path for a route template.
fn concrete(route: &str, execution: &str) -> String {
    route
        .replace("{name}", "matrix")
        .replace("{version}", "1")
        .replace("{execution}", execution)
        .replace("{step}", "A")
        .replace("{token}", &uuid::Uuid::new_v4().to_string())
}

async fn call(app: &TestApp, client: &reqwest::Client, method: &str, path: &str) -> crate::helpers::Resp {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method.clone(), format!("{}{path}", app.base));
    if matches!(method, Method::POST | Method::PUT) {
        request = request.json(&json!({}));
    }
    let resp = app.raw(request).await;
    openapi::check_response(method.as_str(), path, &resp);
    resp
}

#[sqlx::test]
async fn every_route_answers_401_403_or_serves_by_role(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("matrix", pass_pipeline()).await;
    let execution = app.start("matrix", json!({})).await;
    app.wait_terminal(&execution).await;
    let mut clients = Vec::new();
    for role in ["viewer", "operator", "editor", "admin"] {
        let token = token_with_role(&app, &format!("matrix-{role}"), role).await;
        clients.push((
            role,
            role.parse::<stepwise::domain::auth::Role>().unwrap(),
            client_with_token(&token, Duration::from_secs(60)),
        ));
    }
    let anonymous = reqwest::Client::new();
    let wrong = client_with_token("sw_not_a_token_of_this_server_at_all", Duration::from_secs(60));
    // Destructive routes last, so the others find what they name.
    let mut routes: Vec<_> = POLICY.iter().collect();
    routes.sort_by_key(|(method, _, _)| *method == "DELETE");
    for (method, route, access) in routes {
        let path = concrete(route, &execution);
        for client in [&anonymous, &wrong] {
            let resp = call(&app, client, method, &path).await;
            match access {
                Access::Open => assert!(
                    ![401, 403].contains(&resp.status),
                    "{method} {route} is open but answered {}",
                    resp.status
                ),
                Access::Role(_) => {
                    resp.expect_error(401, "Unauthorized");
                }
            }
        }
        for (role_name, role, client) in &clients {
            let resp = call(&app, client, method, &path).await;
            match access {
                Access::Role(needs) if role < needs => {
                    let message = resp.expect_error(403, "Forbidden");
                    assert!(message.contains(&needs.to_string()), "{message}");
                }
                _ => assert!(
                    ![401, 403].contains(&resp.status),
                    "{method} {route} with a {role_name} token answered {}: {}",
                    resp.status,
                    resp.text
                ),
            }
        }
    }
}

#[test]
fn the_policy_lists_exactly_the_documented_operations() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, operation) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_uppercase();
            if method == "PARAMETERS" {
                continue;
            }
            let path = path.as_str().unwrap().to_string();
            let open = operation["security"].as_sequence().is_some_and(|s| s.is_empty());
            if !open {
                let responses = operation["responses"].as_mapping().unwrap();
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{method} {path} documents no {status}");
                }
            }
            documented.insert((method, path, open));
        }
    }
    let policy: BTreeSet<_> = POLICY
        .iter()
        .map(|(m, p, a)| (m.to_string(), p.to_string(), *a == Access::Open))
        .collect();
    assert_eq!(documented, policy, "openapi.yaml and api::auth::POLICY disagree");
}

/// What a web page can send without a CORS preflight, or through a DNS
/// name it controls: none of it may reach a handler.
async fn browser_requests_are_refused(app: &TestApp, client: &reqwest::Client) {
    let body = json!({"name": "evil", "definition": pass_pipeline()}).to_string();
    let url = format!("{}/v1/pipelines", app.base);
    // A form-like POST: text/plain or no Content-Type at all.
    let no_type = app.raw(client.post(&url).body(body.clone())).await;
    no_type.expect_error(415, "UnsupportedMediaType");
    let plain = app
        .raw(
            client
                .post(&url)
                .header("content-type", "text/plain")
                .body(body.clone()),
        )
        .await;
    plain.expect_error(415, "UnsupportedMediaType");
    // An empty form post (no body, a form's Content-Type), as a page sends
    // to a route that needs no body.
    let empty_form = app
        .raw(
            client
                .post(format!("{}/v1/executions/{}/stop", app.base, uuid::Uuid::new_v4()))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", "0"),
        )
        .await;
    empty_form.expect_error(415, "UnsupportedMediaType");
    // A cross-site request (the page's Origin) with a JSON body.
    let foreign_origin = app
        .raw(
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("origin", "http://evil.example")
                .body(body.clone()),
        )
        .await;
    let message = foreign_origin.expect_error(403, "Forbidden");
    assert!(message.contains("evil.example"), "{message}");
    let null_origin = app
        .raw(
            client
                .get(format!("{}/v1/pipelines", app.base))
                .header("origin", "null"),
        )
        .await;
    null_origin.expect_error(403, "Forbidden");
    // DNS rebinding: the page's own name resolved to 127.0.0.1.
    let rebound = app
        .raw(
            client
                .get(format!("{}/v1/pipelines", app.base))
                .header("host", "evil.example:8080"),
        )
        .await;
    let message = rebound.expect_error(403, "Forbidden");
    assert!(message.contains("api.allowed_hosts"), "{message}");
    // This server's own pages may call it.
    let same_origin = app
        .raw(
            client
                .get(format!("{}/v1/pipelines", app.base))
                .header("origin", &app.base),
        )
        .await;
    assert_ne!(same_origin.status, 403, "{}", same_origin.text);
    // Nothing was created.
    let list = app.get("/v1/pipelines").await;
    assert_eq!(list.expect(200)["pipelines"], json!([]));
}

#[sqlx::test]
async fn browser_shaped_requests_are_refused_without_a_token(db: PgPool) {
    let app = TestApp::spawn(db).await;
    browser_requests_are_refused(&app, &reqwest::Client::new()).await;
}

#[sqlx::test]
async fn browser_shaped_requests_are_refused_with_auth_disabled(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.auth.enabled = false).await;
    browser_requests_are_refused(&app, &reqwest::Client::new()).await;
    // With authentication off (loopback only), a plain client is served.
    let open = app
        .raw(reqwest::Client::new().get(format!("{}/v1/pipelines", app.base)))
        .await;
    open.expect(200);
}

#[sqlx::test]
async fn allowed_hosts_admits_configured_names(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.api.allowed_hosts = vec!["stepwise.internal".into()]).await;
    let resp = app
        .raw(
            app.client
                .get(format!("{}/v1/pipelines", app.base))
                .header("host", "stepwise.internal:8080")
                .header("origin", "https://stepwise.internal"),
        )
        .await;
    resp.expect(200);
    // Probes answer whatever name the orchestrator uses.
    let probe = app
        .raw(
            reqwest::Client::new()
                .get(format!("{}/healthz", app.base))
                .header("host", "10.0.0.7:8080"),
        )
        .await;
    probe.expect(200);
}

#[sqlx::test]
async fn revocation_takes_effect_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let token = token_with_role(&app, "ci", "operator").await;
    let ci = client_with_token(&token, Duration::from_secs(30));
    let list = format!("{}/v1/pipelines", app.base);
    app.raw(ci.get(&list)).await.expect(200);
    app.delete("/v1/tokens/ci").await.expect(204);
    app.raw(ci.get(&list)).await.expect_error(401, "Unauthorized");
    // Listed as revoked; the text of no token is ever listed.
    let tokens = app.get("/v1/tokens").await;
    let body = tokens.expect(200);
    assert!(!tokens.text.contains(&token) && !tokens.text.contains(TEST_TOKEN));
    let ci_row = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap();
    assert!(ci_row["revoked_at"].is_string(), "{ci_row}");
    assert!(ci_row["last_used_at"].is_string(), "{ci_row}");
    // Revoking it again, or a token never made: 404. The name is free again.
    app.delete("/v1/tokens/ci").await.expect_error(404, "NotFound");
    token_with_role(&app, "ci", "viewer").await;
    app.post("/v1/tokens", &json!({"name": "ci", "role": "viewer"}))
        .await
        .expect_error(409, "Conflict");
}

#[sqlx::test]
async fn token_requests_are_validated(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let bad_role = app.post("/v1/tokens", &json!({"name": "x", "role": "root"})).await;
    assert!(bad_role
        .expect_error(400, "ValidationError")
        .contains("viewer, operator"));
    let bad_name = app.post("/v1/tokens", &json!({"name": "a b", "role": "viewer"})).await;
    assert_eq!(bad_name.detail_paths(), ["/name"]);
    // The last admin token stays: nobody could manage tokens otherwise.
    let message = app.delete("/v1/tokens/admin").await.expect_error(409, "Conflict");
    assert!(message.contains("last admin"), "{message}");
    let other_admin = token_with_role(&app, "second-admin", "admin").await;
    app.delete("/v1/tokens/admin").await.expect(204);
    // The test's own token is gone now; the second admin manages.
    app.get("/v1/tokens").await.expect_error(401, "Unauthorized");
    let second = client_with_token(&other_admin, Duration::from_secs(30));
    app.raw(second.get(format!("{}/v1/tokens", app.base))).await.expect(200);
}

#[sqlx::test]
async fn first_start_writes_an_admin_token_file(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.auth.admin_token = String::new()).await;
    let path = app.data_dir.path().join("admin.token");
    let mode = std::fs::metadata(&path)
        .expect("admin.token written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert!(token.starts_with("sw_") && token.len() >= 40, "{token}");
    let admin = client_with_token(&token, Duration::from_secs(30));
    let tokens = app.raw(admin.get(format!("{}/v1/tokens", app.base))).await;
    assert_eq!(tokens.expect(200)["tokens"][0]["role"], "admin");
    // The test client's configured token was never installed.
    app.get("/v1/pipelines").await.expect_error(401, "Unauthorized");
}

fn stepwise(url: &str, data_dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .env_remove("STEPWISE_TEST_WORKER_LOGS")
        .env("STEPWISE_DATABASE_URL", url)
        .env("STEPWISE_DATA_DIR", data_dir)
        .env("NO_COLOR", "1");
    command
}

#[sqlx::test]
async fn the_token_cli_creates_lists_and_revokes(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cli", pass_pipeline()).await;
    let url = database_url(&app.db).await;
    let dir = app.data_dir.path();
    let out = stepwise(&url, dir)
        .args(["token", "create", "--name", "deploy", "--role", "operator"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token));
    let deploy = client_with_token(&token, Duration::from_secs(30));
    // An operator starts executions but does not change pipelines.
    let start = app
        .raw(
            deploy
                .post(format!("{}/v1/pipelines/cli/executions", app.base))
                .json(&json!({})),
        )
        .await;
    start.expect(201);
    let create = app
        .raw(
            deploy
                .post(format!("{}/v1/pipelines", app.base))
                .json(&json!({"name": "x", "definition": pass_pipeline()})),
        )
        .await;
    create.expect_error(403, "Forbidden");
    let list = stepwise(&url, dir).args(["token", "list"]).output().unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(listing.contains("deploy") && listing.contains("operator"), "{listing}");
    assert!(!listing.contains(&token));
    let revoke = stepwise(&url, dir)
        .args(["token", "revoke", "deploy"])
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    let after = app.raw(deploy.get(format!("{}/v1/pipelines", app.base))).await;
    after.expect_error(401, "Unauthorized");
    let bad = stepwise(&url, dir)
        .args(["token", "create", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn auth_off_is_refused_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = stepwise("postgres://postgres@127.0.0.1:1/unused", dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("STEPWISE_AUTH__ENABLED", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.enabled = false is refused") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn the_first_token_is_logged_by_path_never_by_value(db: PgPool) {
    let url = database_url(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = stepwise(&url, &dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let token_file = dir.path().join("data/admin.token");
    let token = crate::helpers::wait_until(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&token_file).ok()?;
        let log = std::fs::read_to_string(&log).ok()?;
        log.contains("stepwise API listening").then(|| text.trim().to_string())
    })
    .await
    .expect("the server started and wrote admin.token");
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&token_file.canonicalize().unwrap().display().to_string()),
        "{log}"
    );
    assert!(!log.contains(&token), "the token reached the log");
}

#[sqlx::test]
async fn a_viewer_does_not_see_callback_tokens(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Approve", "Type": "Callback", "Arguments": {}}]),
    );
    app.create_pipeline("gate", definition).await;
    let id = app.start("gate", json!({})).await;
    let step = app
        .wait_step(&id, "Approve", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    let token = step["metadata"]["callback"]["token"].as_str().unwrap().to_string();
    let viewer = client_with_token(
        &token_with_role(&app, "watcher", "viewer").await,
        Duration::from_secs(30),
    );
    for path in [
        format!("/v1/executions/{id}/steps/Approve"),
        format!("/v1/executions/{id}/steps"),
    ] {
        let resp = call(&app, &viewer, "GET", &path).await;
        resp.expect(200);
        assert!(
            !resp.text.contains(&token),
            "a viewer saw the callback token: {}",
            resp.text
        );
    }
    // An operator may answer it, so sees it.
    let operator = client_with_token(
        &token_with_role(&app, "approver", "operator").await,
        Duration::from_secs(30),
    );
    let resp = call(&app, &operator, "GET", &format!("/v1/executions/{id}/steps/Approve")).await;
    assert!(resp.text.contains(&token));
}

/// The status of one raw HTTP/1.1 request, for what reqwest will not send
/// (two Host headers, an absolute-form target).
async fn raw_status(app: &TestApp, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[sqlx::test]
async fn head_needs_what_get_needs(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // Probes and the API description are open to HEAD as to GET.
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        let resp = app
            .raw(reqwest::Client::new().head(format!("{}{path}", app.base)))
            .await;
        assert_eq!(resp.status, 200, "HEAD {path}");
    }
    let viewer = token_with_role(&app, "head-viewer", "viewer").await;
    let viewer = client_with_token(&viewer, Duration::from_secs(30));
    let resp = app.raw(viewer.head(format!("{}/v1/pipelines", app.base))).await;
    assert_eq!(resp.status, 200, "a viewer may HEAD what it may GET");
    let resp = app.raw(viewer.head(format!("{}/v1/tokens", app.base))).await;
    assert_eq!(resp.status, 403, "but not an admin's route");
    let resp = app
        .raw(reqwest::Client::new().head(format!("{}/v1/pipelines", app.base)))
        .await;
    assert_eq!(resp.status, 401);
}

#[sqlx::test]
async fn host_tricks_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let auth = format!("Authorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n");
    let ok = raw_status(
        &app,
        &format!("GET /v1/pipelines HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
    )
    .await;
    assert_eq!(ok, 200);
    for (what, request) in [
        (
            "a second, foreign Host",
            format!("GET /v1/pipelines HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n{auth}\r\n"),
        ),
        (
            "a port that is a host name",
            format!("GET /v1/pipelines HTTP/1.1\r\nHost: localhost:evil.example\r\n{auth}\r\n"),
        ),
        (
            "an unclosed IPv6 bracket",
            format!("GET /v1/pipelines HTTP/1.1\r\nHost: [::1\r\n{auth}\r\n"),
        ),
        (
            "an absolute-form target naming a foreign host",
            format!("GET http://evil.example/v1/pipelines HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
        ),
    ] {
        assert_eq!(raw_status(&app, &request).await, 403, "{what}");
    }
}
