//! The web UI's server side: sign-in and its cookie, every page behind it,
//! roles obeyed as the REST API obeys them, cookie-signed posts only from
//! this site, and the token in no URL, page or log line. (What the pages
//! show is checked in a browser by tests/ui, run by `.ci/ui`.)

use std::time::Duration;

use reqwest::{header, redirect, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use stepwise::api::{auth::Access, ui::POLICY};

use crate::{
    helpers::{definition_with, TestApp, TEST_TOKEN},
    procs::{database_url, StepwiseProcess},
};

/// A client that sends no token and follows no redirect.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn pipeline() -> Value {
    definition_with(
        json!([]),
        json!([
            {"Name": "A", "Type": "Pass", "Arguments": {"x": 1}},
            {"Name": "B", "Type": "Pass", "Arguments": {"a": {"Get": "Steps.A.Outputs.x"}}}
        ]),
    )
}

async fn token_with_role(app: &TestApp, name: &str, role: &str) -> String {
    let created = app.post("/v1/tokens", &json!({"name": name, "role": role})).await;
    created.expect(201)["token"].as_str().unwrap().to_string()
}

/// Signs in through the form and returns the cookie pair (`name=value`).
async fn sign_in(base: &str, token: &str) -> String {
    let resp = browser()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, base)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn get(base: &str, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = browser().get(format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.send().await.unwrap()
}

async fn post_form(
    base: &str,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = browser()
        .post(format!("{base}{path}"))
        .header(header::COOKIE, cookie)
        .form(form);
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.send().await.unwrap()
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[sqlx::test]
async fn sign_in_keeps_the_token_in_a_strict_http_only_session_cookie(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let base = app.base.clone();
    let resp = browser()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, &base)
        .form(&[("token", TEST_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/ui/");
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("stepwise_session="), "{cookie}");
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} missing from {cookie}");
    }
    // A session cookie: gone when the browser closes.
    assert!(!cookie.contains("Max-Age") && !cookie.contains("Expires"), "{cookie}");
    let pair = attributes[0];
    let page = get(&base, "/ui/", Some(pair)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("Signed in as"));

    // A wrong token: the form again, no cookie.
    let wrong = browser()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, &base)
        .form(&[("token", "sw_not_a_token_of_this_server_at_all")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());

    // Sign-out clears it.
    let out = post_form(&base, "/ui/sign-out", pair, Some(&base), &[]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

/// A concrete path for a UI route template.
fn concrete(route: &str, execution: &str) -> String {
    route
        .replace("{name}", "p")
        .replace("{version}", "1")
        .replace("{execution}", execution)
        .replace("{file}", "app.css")
}

#[sqlx::test]
async fn every_page_and_action_needs_a_signed_in_token_with_the_role(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let base = app.base.clone();
    app.create_pipeline("p", pipeline()).await;
    let execution = app.start("p", json!({})).await;
    app.wait_terminal(&execution).await;
    let viewer = sign_in(&base, &token_with_role(&app, "ui-viewer", "viewer").await).await;
    let operator = sign_in(&base, &token_with_role(&app, "ui-operator", "operator").await).await;
    let bad = "stepwise_session=sw_not_a_token_of_this_server_at_all";
    for (method, route, access) in POLICY {
        let path = concrete(route, &execution);
        let send = |cookie: Option<&str>| {
            let mut request = browser().request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(cookie) = cookie {
                request = request.header(header::COOKIE, cookie);
            }
            if *method == "POST" {
                request = request.header(header::ORIGIN, &base).form(&[("mode", "all")]);
            }
            request.send()
        };
        for cookie in [None, Some(bad)] {
            let resp = send(cookie).await.unwrap();
            let to_sign_in = resp.status() == StatusCode::SEE_OTHER && location(&resp) == "/ui/sign-in";
            match access {
                Access::Open => assert!(
                    *route == "/ui/sign-out" || !to_sign_in,
                    "{method} {route} is open but sent to sign-in"
                ),
                Access::Role(_) => assert!(to_sign_in, "{method} {route} without a valid cookie: {}", resp.status()),
            }
        }
        if let Access::Role(needs) = access {
            for (role, cookie) in [
                (stepwise::domain::auth::Role::Viewer, &viewer),
                (stepwise::domain::auth::Role::Operator, &operator),
            ] {
                let resp = send(Some(cookie)).await.unwrap();
                if role < *needs {
                    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method} {route} as {role}");
                    let text = resp.text().await.unwrap();
                    assert!(text.contains(&format!("needs a token with the {needs} role")), "{text}");
                } else {
                    assert!(
                        ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&resp.status())
                            && location(&resp) != "/ui/sign-in",
                        "{method} {route} as {role}: {}",
                        resp.status()
                    );
                }
            }
        }
    }
}

#[sqlx::test]
async fn a_viewer_cannot_start_and_an_operator_can(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let base = app.base.clone();
    app.create_pipeline("p", pipeline()).await;
    let viewer = sign_in(&base, &token_with_role(&app, "ui-viewer", "viewer").await).await;
    let page = get(&base, "/ui/pipelines/p", Some(&viewer)).await.text().await.unwrap();
    assert!(!page.contains("Plan a run"), "a viewer is offered no plan form");
    let start = post_form(&base, "/ui/pipelines/p/start", &viewer, Some(&base), &[("mode", "all")]).await;
    assert_eq!(start.status(), StatusCode::FORBIDDEN);
    // The REST API with the cookie obeys the same role.
    let rest = browser()
        .post(format!("{base}/v1/pipelines/p/executions"))
        .header(header::COOKIE, &viewer)
        .header(header::ORIGIN, &base)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::FORBIDDEN);
    let listed = app.get("/v1/pipelines/p/executions").await;
    assert_eq!(listed.expect(200)["executions"].as_array().unwrap().len(), 0);

    let operator = sign_in(&base, &token_with_role(&app, "ui-operator", "operator").await).await;
    let page = get(&base, "/ui/pipelines/p", Some(&operator))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Plan a run"));
    let plan = get(&base, "/ui/pipelines/p/plan?mode=all", Some(&operator)).await;
    assert_eq!(plan.status(), StatusCode::OK);
    let plan = plan.text().await.unwrap();
    assert!(plan.contains("Start this run"), "{plan}");
    let started = post_form(
        &base,
        "/ui/pipelines/p/start",
        &operator,
        Some(&base),
        &[("mode", "all")],
    )
    .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let id = location(&started).rsplit('/').next().unwrap().to_string();
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let shown = get(&base, &format!("/ui/executions/{id}"), Some(&operator))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        shown.contains(r#"data-step="A""#) && shown.contains("st-Succeeded"),
        "{shown}"
    );
}

#[sqlx::test]
async fn cookie_signed_posts_must_come_from_this_site(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let base = app.base.clone();
    app.create_pipeline("p", pipeline()).await;
    let operator = sign_in(&base, &token_with_role(&app, "ui-operator", "operator").await).await;
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let resp = post_form(&base, "/ui/pipelines/p/start", &operator, origin, &[("mode", "all")]).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "origin {origin:?}");
    }
    // Signing in from another site (login CSRF) is refused too.
    let foreign = browser()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, "http://evil.example")
        .form(&[("token", TEST_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(foreign.headers().get(header::SET_COOKIE).is_none());
    // The REST API with the cookie: JSON and this site's Origin only.
    let rest = |origin: Option<&str>| {
        let mut request = browser()
            .post(format!("{base}/v1/pipelines/p/executions"))
            .header(header::COOKIE, &operator)
            .json(&json!({}));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.send()
    };
    assert_eq!(rest(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        rest(Some("http://evil.example")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let form_to_api = browser()
        .post(format!("{base}/v1/pipelines/p/executions"))
        .header(header::COOKIE, &operator)
        .header(header::ORIGIN, &base)
        .form(&[("a", "b")])
        .send()
        .await
        .unwrap();
    assert_eq!(form_to_api.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(rest(Some(&base)).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(
        app.get("/v1/pipelines/p/executions").await.expect(200)["executions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[sqlx::test]
async fn the_token_is_in_no_url_page_or_log_line(db: PgPool) {
    let url = database_url(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = StepwiseProcess::serve(&url, data_dir.path(), &[("RUST_LOG", "debug")]).await;
    let base = server.base_url.clone().unwrap();
    let admin = crate::helpers::authed_client(Duration::from_secs(60));
    let created = admin
        .post(format!("{base}/v1/tokens"))
        .json(&json!({"name": "ui-secret", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let token = created.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    admin
        .post(format!("{base}/v1/pipelines"))
        .json(&json!({"name": "p", "definition": pipeline()}))
        .send()
        .await
        .unwrap();
    let cookie = sign_in(&base, &token).await;
    let started = post_form(&base, "/ui/pipelines/p/start", &cookie, Some(&base), &[("mode", "all")]).await;
    let execution = location(&started);
    assert!(execution.starts_with("/ui/executions/"), "{execution}");
    let encoded = cookie.split_once('=').unwrap().1.to_string();
    for path in [
        "/ui/".to_string(),
        "/ui/pipelines/p".to_string(),
        "/ui/pipelines/p/plan?mode=all".to_string(),
        format!("{execution}?step=A"),
        "/ui/pipelines/p/versions/1".to_string(),
    ] {
        let resp = get(&base, &path, Some(&cookie)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert!(!location(&resp).contains(&token));
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains(&token) && !text.contains(&encoded),
            "{path} shows the token"
        );
    }
    // The events the page follows, signed in by the cookie.
    let id = execution.rsplit('/').next().unwrap();
    let events = get(&base, &format!("/v1/executions/{id}/events"), Some(&cookie)).await;
    assert_eq!(events.status(), StatusCode::OK);
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("signed in to the web UI"),
        "the sign-in is logged (by token name)"
    );
    assert!(
        !log.contains(&token) && !log.contains(&encoded),
        "the token reached the log"
    );
}

#[sqlx::test]
async fn a_for_each_body_step_shows_how_its_iterations_ended(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = crate::helpers::definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [1, 2, 3], "MaxConcurrency": 3,
            "ForEachBody": [{"Name": "Work", "Type": "Command", "Arguments": {
                "Shell": "test \"$N\" != 2", "Env": {"N": {"Get": "ForEach.CurrentItem"}}}}]}}]),
    );
    app.create_pipeline("fe", def).await;
    let id = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    let cookie = sign_in(&app.base, TEST_TOKEN).await;
    let page = get(&app.base, &format!("/ui/executions/{id}"), Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    // The body step stands for its three iteration steps, not for a step
    // of its own that never ran.
    assert!(html.contains("2/3 iterations done"), "{html}");
    app.stop().await;
}
