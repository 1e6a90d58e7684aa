//! Named secrets (SPEC 7): stored encrypted, listed by name, never returned;
//! allowed only as a Command's Env value; the value reaches the process and
//! nothing else (no response, server log line, event, database row in
//! clear, cache key or miss reason), and is masked in the step's log.

use std::{os::unix::fs::PermissionsExt, path::Path};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{
    helpers::{definition_with, TestApp},
    procs::{database_url, StepwiseProcess},
};

fn sha256(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A value that appears nowhere by chance.
fn unique_value(label: &str) -> String {
    format!("sw-{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Every row of every table of the test database, as text (bytea as hex).
async fn database_text(db: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables \
         where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut all = String::new();
    for table in tables {
        let rows: Option<String> =
            sqlx::query_scalar(&format!("select string_agg(t::text, E'\\n') from \"{table}\" t"))
                .fetch_one(db)
                .await
                .unwrap();
        all.push_str(&rows.unwrap_or_default());
        all.push('\n');
    }
    all
}

/// Panics if `text` (from `what`) holds `value` in clear or hex-encoded.
#[track_caller]
fn assert_absent(what: &str, text: &str, value: &str) {
    assert!(!text.contains(value), "{what} holds the secret value:\n{text}");
    assert!(
        !text.contains(&hex::encode(value.as_bytes())),
        "{what} holds the secret value hex-encoded"
    );
}

#[sqlx::test]
async fn secrets_are_stored_replaced_listed_and_deleted_and_never_returned(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let value = unique_value("crud");
    let created = app.put("/v1/secrets/API_TOKEN", &json!({"value": value})).await;
    let body = created.expect(201).clone();
    assert_eq!(body["name"], "API_TOKEN");
    assert_absent("the PUT response", &created.text, &value);

    let other = unique_value("crud2");
    let replaced = app.put("/v1/secrets/API_TOKEN", &json!({"value": other})).await;
    let again = replaced.expect(200).clone();
    assert_eq!(again["created_at"], body["created_at"]);
    assert_absent("the PUT response", &replaced.text, &other);
    app.put("/v1/secrets/B_KEY", &json!({"value": "x"})).await.expect(201);

    let list = app.get("/v1/secrets").await;
    let names: Vec<&str> = list.expect(200)["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_TOKEN", "B_KEY"]);
    assert_absent("the list", &list.text, &value);
    assert_absent("the list", &list.text, &other);
    let page = app.get("/v1/secrets?limit=1").await.expect(200).clone();
    assert_eq!(page["secrets"].as_array().unwrap().len(), 1);
    let token = page["next_token"].as_str().unwrap();
    let rest = app.get(&format!("/v1/secrets?limit=1&next_token={token}")).await;
    assert_eq!(rest.expect(200)["secrets"][0]["name"], "B_KEY");

    // Encrypted at rest: no row holds either value.
    let stored = database_text(&db).await;
    assert!(stored.contains("API_TOKEN"));
    assert_absent("the database", &stored, &value);
    assert_absent("the database", &stored, &other);

    app.delete("/v1/secrets/API_TOKEN").await.expect(204);
    let message = app.delete("/v1/secrets/API_TOKEN").await.expect_error(404, "NotFound");
    assert!(message.contains("API_TOKEN"), "{message}");
    let names = app.get("/v1/secrets").await.expect(200)["secrets"].clone();
    assert_eq!(names.as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn bad_secret_names_and_values_are_refused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let resp = app.put("/v1/secrets/bad-name", &json!({"value": "v"})).await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("'-'"), "{message}");
    assert_eq!(resp.detail_paths(), ["/name"]);
    let long = "A".repeat(129);
    let message = app
        .put(&format!("/v1/secrets/{long}"), &json!({"value": "v"}))
        .await
        .expect_error(400, "ValidationError");
    assert!(message.contains("128"), "{message}");

    let resp = app.put("/v1/secrets/OK", &json!({"value": ""})).await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), ["/value"]);
    let resp = app.put("/v1/secrets/OK", &json!({"value": "a\u{0}b"})).await;
    assert!(resp.expect_error(400, "ValidationError").contains("NUL"));
    let big = "x".repeat(64 * 1024 + 1);
    let message = app
        .put("/v1/secrets/OK", &json!({"value": big}))
        .await
        .expect_error(413, "PayloadTooLarge");
    assert!(message.contains("65536"), "{message}");
    app.put("/v1/secrets/OK", &json!({"value": 5}))
        .await
        .expect_error(400, "ValidationError");
    app.put("/v1/secrets/OK", &json!({}))
        .await
        .expect_error(400, "ValidationError");
    app.put("/v1/secrets/OK", &json!({"value": "v", "extra": 1}))
        .await
        .expect_error(400, "ValidationError");
    assert_eq!(app.get("/v1/secrets").await.expect(200)["secrets"], json!([]));
}

#[sqlx::test]
async fn a_secret_anywhere_but_a_command_env_is_a_validation_error(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Echo", "Type": "Command",
                "Arguments": {"Command": ["echo", {"Get": "Secrets.API_TOKEN"}]}}]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "leaky", "definition": definition}))
        .await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(
        message.contains("Secrets.API_TOKEN") && message.contains("Env"),
        "{message}"
    );
    assert_eq!(resp.detail_paths(), ["/Steps/0/Arguments/Command/1"]);
    let pass = definition_with(
        json!([]),
        json!([{"Name": "P", "Type": "Pass", "Arguments": {"Env": {"T": {"Get": "Secrets.API_TOKEN"}}}}]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "leaky", "definition": pass}))
        .await;
    resp.expect_error(400, "ValidationError");
    assert_eq!(resp.detail_paths(), ["/Steps/0/Arguments/Env/T"]);
}

#[sqlx::test]
async fn a_start_that_needs_a_missing_secret_is_refused_naming_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let definition = definition_with(
        json!([]),
        json!([{"Name": "Use", "Type": "Command",
                "Arguments": {"Shell": "true", "Env": {"TOKEN": {"Get": "Secrets.MISSING_ONE"}}}}]),
    );
    app.create_pipeline("needs", definition).await;
    let resp = app.post("/v1/pipelines/needs/executions", &json!({})).await;
    let message = resp.expect_error(400, "ValidationError");
    assert!(message.contains("MISSING_ONE"), "{message}");
    assert_eq!(resp.detail_paths(), ["/Steps/0/Arguments/Env/TOKEN"]);
    let plan = app.post("/v1/pipelines/needs/executions/plan", &json!({})).await;
    let errors = plan.expect(200)["errors"].to_string();
    assert!(errors.contains("MISSING_ONE"), "{errors}");

    app.put("/v1/secrets/MISSING_ONE", &json!({"value": "here now"}))
        .await
        .expect(201);
    let id = app.start("needs", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
}

#[sqlx::test]
async fn a_secret_deleted_after_the_start_fails_the_step_that_needs_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let value = unique_value("gone");
    app.put("/v1/secrets/GONE", &json!({"value": value})).await.expect(201);
    let gate = format!("while [ ! -e {0}/go ]; do sleep 0.05; done", dir.path().display());
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Gate", "Type": "Command", "Arguments": {"Shell": gate, "TimeoutSeconds": 60}},
            {"Name": "Use", "Type": "Command", "DependsOn": ["Gate"],
             "Arguments": {"Shell": "echo \"$TOKEN\"", "Env": {"TOKEN": {"Get": "Secrets.GONE"}}}}
        ]),
    );
    app.create_pipeline("gone", definition).await;
    let id = app.start("gone", json!({})).await;
    app.wait_step(&id, "Gate", |s| s["status"] == "Executing").await;
    app.delete("/v1/secrets/GONE").await.expect(204);
    std::fs::write(dir.path().join("go"), "").unwrap();
    let execution = app.wait_terminal(&id).await;
    assert_eq!(execution["status"], "Failed", "{execution}");
    let step = app.step(&id, "Use").await;
    assert_eq!(step["error_type"], "Step.INPUT_ERROR", "{step}");
    let reason = step["failure_reason"].as_str().unwrap();
    assert!(reason.contains("secret \"GONE\" does not exist"), "{reason}");
}

#[sqlx::test]
async fn the_key_file_is_private_and_a_wrong_length_key_is_refused_at_start(db: PgPool) {
    let app = TestApp::spawn(db.clone()).await;
    let key_file = app.data_dir.path().join("secrets.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("STEPWISE_TEST_WORKER_LOGS")
        .env("STEPWISE_DATABASE_URL", database_url(&db).await)
        .env("STEPWISE_DATA_DIR", app.data_dir.path())
        // 16 bytes, base64.
        .env("STEPWISE_SECRETS__KEY", "AAAAAAAAAAAAAAAAAAAAAA==")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("secrets.key") && stderr.contains("exactly 32 bytes, got 16 bytes"),
        "{stderr}"
    );
}

/// Talks to a `stepwise serve` process.
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request is sent");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body is read"))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let (status, text) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Runs the pipeline to its end; returns the execution id.
    async fn run(&self, pipeline: &str) -> String {
        let path = format!("/v1/pipelines/{pipeline}/executions");
        let started = self.json(reqwest::Method::POST, &path, Some(&json!({}))).await;
        let id = started["execution_id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let path = format!("/v1/executions/{id}?wait_seconds=20");
            let execution = self.json(reqwest::Method::GET, &path, None).await;
            if execution["status"] != "Executing" {
                assert_eq!(execution["status"], "Succeeded", "{execution}");
                return id;
            }
            assert!(tokio::time::Instant::now() < deadline, "{execution}");
        }
    }

    /// Every response about an execution: describe, steps, each step's
    /// detail and logs, events, definition, parameters.
    async fn everything_about(&self, id: &str) -> String {
        let get = reqwest::Method::GET;
        let mut all = String::new();
        for path in ["", "/steps", "/events", "/definition", "/parameters"] {
            let (_, text) = self
                .call(get.clone(), &format!("/v1/executions/{id}{path}"), None)
                .await;
            all.push_str(&text);
        }
        for step in ["Use", "After"] {
            for path in ["", "/logs"] {
                let (_, text) = self
                    .call(get.clone(), &format!("/v1/executions/{id}/steps/{step}{path}"), None)
                    .await;
                all.push_str(&text);
            }
        }
        all
    }
}

fn received(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("received"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A cached Command step that proves what it received by its digest (in
/// `witness/received`) and tries to leak it through its log (stdout and
/// stderr) and outputs, and a Pass step reading those outputs.
fn secretive_pipeline(witness: &Path) -> Value {
    let script = format!(
        "printf %s \"$TOKEN\" | sha256sum | cut -c1-64 >> {0}/received; \
         echo \"token=$TOKEN\"; echo \"again $TOKEN\" >&2; \
         printf '{{\"token\": \"%s\"}}' \"$TOKEN\" > $STEPWISE_OUTPUTS",
        witness.display()
    );
    definition_with(
        json!([]),
        json!([
            {"Name": "Use", "Type": "Command",
             "Arguments": {"Shell": script, "Env": {"TOKEN": {"Get": "Secrets.API_TOKEN"}}, "TimeoutSeconds": 60},
             "CacheConfig": {"Enabled": true}},
            {"Name": "After", "Type": "Pass", "Arguments": {"seen": {"Get": "Steps.Use.Outputs.token"}}}
        ]),
    )
}

/// The test SPEC 7 asks for: a secret that never appears in any response,
/// log line, event or miss reason of a run that uses it, while the process
/// receives it. Runs the real server with debug logging and captures it.
#[sqlx::test]
async fn a_secret_reaches_the_process_and_nothing_else(db: PgPool) {
    let url = database_url(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = StepwiseProcess::serve(&url, data_dir.path(), &[("RUST_LOG", "debug")]).await;
    let client = Client {
        base: server.base_url.clone().unwrap(),
        http: crate::helpers::authed_client(std::time::Duration::from_secs(120)),
    };
    let put = reqwest::Method::PUT;
    let first = unique_value("first");
    let second = unique_value("second");
    let (status, text) = client
        .call(put.clone(), "/v1/secrets/API_TOKEN", Some(&json!({"value": first})))
        .await;
    assert_eq!(status, 201, "{text}");

    let witness = tempfile::tempdir().unwrap();
    let definition = secretive_pipeline(witness.path());
    client
        .json(
            reqwest::Method::POST,
            "/v1/pipelines",
            Some(&json!({"name": "secretive", "definition": definition})),
        )
        .await;

    let run1 = client.run("secretive").await;
    assert_eq!(received(witness.path()), [sha256(&first)], "the process got the value");
    let (_, log) = client
        .call(
            reqwest::Method::GET,
            &format!("/v1/executions/{run1}/steps/Use/logs"),
            None,
        )
        .await;
    assert!(log.contains("token=***") && log.contains("again ***"), "{log}");
    let after = client
        .json(
            reqwest::Method::GET,
            &format!("/v1/executions/{run1}/steps/After"),
            None,
        )
        .await;
    assert_eq!(after["properties"]["Outputs"]["seen"], "***", "{after}");

    // Unchanged secret: a hit, no process.
    let run2 = client.run("secretive").await;
    let use2 = client
        .json(reqwest::Method::GET, &format!("/v1/executions/{run2}/steps/Use"), None)
        .await;
    assert_eq!(use2["cache"]["status"], "hit", "{use2}");
    assert_eq!(received(witness.path()).len(), 1);

    // Changed secret: a miss that says so, and the process gets the new value.
    let (status, _) = client
        .call(put, "/v1/secrets/API_TOKEN", Some(&json!({"value": second})))
        .await;
    assert_eq!(status, 200);
    let run3 = client.run("secretive").await;
    let use3 = client
        .json(reqwest::Method::GET, &format!("/v1/executions/{run3}/steps/Use"), None)
        .await;
    assert_eq!(use3["cache"]["status"], "miss", "{use3}");
    assert!(
        use3["cache"]["miss_reason"]
            .as_str()
            .unwrap()
            .ends_with("Env.TOKEN: secret changed"),
        "{use3}"
    );
    assert_eq!(received(witness.path())[1], sha256(&second));

    let responses = every_response(&client, &[&run1, &run2, &run3]).await;
    assert!(responses.contains("secret changed") && responses.contains("***"));
    let stored = database_text(&db).await;
    let server_log = server.log.lock().unwrap().join("\n");
    assert!(!server_log.is_empty());
    let on_disk = walk_files(data_dir.path());
    for value in [&first, &second] {
        assert_absent("the API's responses", &responses, value);
        assert_absent("the database", &stored, value);
        assert_absent("the server's log", &server_log, value);
        assert_absent("the data directory", &on_disk, value);
    }
}

/// Every response about the runs, the pipeline, the secrets and a plan,
/// which must predict a hit of the last run from the secret's keyed digest.
async fn every_response(client: &Client, runs: &[&String]) -> String {
    let mut responses = String::new();
    for id in runs {
        responses.push_str(&client.everything_about(id).await);
    }
    for path in [
        "/v1/secrets",
        "/v1/pipelines/secretive",
        "/v1/pipelines/secretive/executions",
    ] {
        responses.push_str(&client.call(reqwest::Method::GET, path, None).await.1);
    }
    let plan = client
        .call(
            reqwest::Method::POST,
            "/v1/pipelines/secretive/executions/plan",
            Some(&json!({})),
        )
        .await;
    assert_eq!(plan.0, 200, "{}", plan.1);
    let verdicts: Value = serde_json::from_str(&plan.1).unwrap();
    assert_eq!(verdicts["steps"][0]["verdict"], "CacheHit", "{verdicts}");
    let last = runs.last().unwrap();
    assert!(verdicts["steps"][0]["source_execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(last.as_str()));
    responses.push_str(&plan.1);
    responses
}

/// The text of every file under `dir` except the key file.
fn walk_files(dir: &Path) -> String {
    let mut all = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.push_str(&walk_files(&path));
        } else if path.file_name().is_some_and(|n| n != "secrets.key") {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()));
        }
    }
    all
}

#[sqlx::test]
async fn forged_next_tokens_are_a_400_not_a_database_error(db: PgPool) {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let app = TestApp::spawn(db).await;
    // A page token is base64 of JSON; this one decodes to "\u0000", which
    // PostgreSQL cannot compare as text.
    let forged = URL_SAFE_NO_PAD.encode(br#""\u0000""#);
    for path in ["/v1/secrets", "/v1/pipelines"] {
        let resp = app.get(&format!("{path}?next_token={forged}")).await;
        resp.expect_error(400, "ValidationError");
    }
    // An executions token is (created_at, id): a time before PostgreSQL's
    // first representable one was its error too.
    app.create_pipeline(
        "paged",
        definition_with(json!([]), json!([{"Name": "A", "Type": "Pass"}])),
    )
    .await;
    let id = uuid::Uuid::new_v4();
    for at in ["-262143-01-01T00:00:00Z", "-4714-01-01T00:00:00Z"] {
        let forged = URL_SAFE_NO_PAD.encode(json!([at, id]).to_string());
        let resp = app
            .get(&format!("/v1/pipelines/paged/executions?next_token={forged}"))
            .await;
        resp.expect_error(400, "ValidationError");
    }
}

/// A secret whose value is a number, written unquoted into the outputs, is
/// masked there as a string would be: in the step's properties, in what a
/// downstream step reads, and in the database.
#[sqlx::test]
async fn a_numeric_secret_written_as_a_number_is_masked_in_outputs(db: PgPool) {
    let url = database_url(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = StepwiseProcess::serve(&url, data_dir.path(), &[]).await;
    let client = Client {
        base: server.base_url.clone().unwrap(),
        http: crate::helpers::authed_client(std::time::Duration::from_secs(120)),
    };
    let value = (1_000_000_000 + uuid::Uuid::new_v4().as_u128() % 1_000_000_000).to_string();
    let (status, text) = client
        .call(reqwest::Method::PUT, "/v1/secrets/PIN", Some(&json!({"value": value})))
        .await;
    assert_eq!(status, 201, "{text}");
    let definition = definition_with(
        json!([]),
        json!([
            {"Name": "Use", "Type": "Command",
             "Arguments": {"Shell": "printf '{\"num\": %s, \"list\": [%s]}' \"$PIN\" \"$PIN\" > $STEPWISE_OUTPUTS",
                           "Env": {"PIN": {"Get": "Secrets.PIN"}}, "TimeoutSeconds": 60}},
            {"Name": "After", "Type": "Pass", "Arguments": {"seen": {"Get": "Steps.Use.Outputs.num"}}}
        ]),
    );
    client
        .json(
            reqwest::Method::POST,
            "/v1/pipelines",
            Some(&json!({"name": "numeric", "definition": definition})),
        )
        .await;
    let run = client.run("numeric").await;
    let get = reqwest::Method::GET;
    let used = client
        .json(get.clone(), &format!("/v1/executions/{run}/steps/Use"), None)
        .await;
    assert_eq!(used["properties"]["Outputs"]["num"], "***", "{used}");
    assert_eq!(used["properties"]["Outputs"]["list"], json!(["***"]), "{used}");
    let after = client
        .json(get, &format!("/v1/executions/{run}/steps/After"), None)
        .await;
    assert_eq!(after["properties"]["Outputs"]["seen"], "***", "{after}");
    let responses = client.everything_about(&run).await;
    assert_absent("the API's responses", &responses, &value);
    assert_absent("the database", &database_text(&db).await, &value);
}
