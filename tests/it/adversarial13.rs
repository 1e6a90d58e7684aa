//! Adversarial tests of the ForEach step (issue 13): hostile definitions,
//! the steps API's iteration pages, faults (stop, retry, lost leases,
//! callbacks per iteration), item-level reuse, and termination.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::for_each::{fan_out, iteration_steps};
use crate::helpers::{count_run, definition_with, runs_of, wait_until, TestApp};

/// Words that betray a Rust or serde type in a message meant for people.
const TYPE_WORDS: [&str; 8] = [
    "invalid type",
    "serde",
    "u32",
    "i64",
    "usize",
    "Option<",
    "Vec<",
    "expected struct",
];

fn assert_human(text: &str) {
    for w in TYPE_WORDS {
        assert!(!text.contains(w), "{w:?} in {text}");
    }
}

async fn refused(app: &TestApp, name: &str, def: Value) -> String {
    let resp = app
        .post("/v1/pipelines", &json!({"name": name, "definition": def}))
        .await;
    resp.expect_error(400, "ValidationError");
    assert_human(&resp.text);
    resp.text.clone()
}

fn one_for_each(args: Value) -> Value {
    definition_with(json!([]), json!([{"Name": "F", "Type": "ForEach", "Arguments": args}]))
}

fn pass_body() -> Value {
    json!([{"Name": "B", "Type": "Pass", "Arguments": {"i": {"Get": "ForEach.CurrentItem"}}}])
}

#[sqlx::test]
async fn adversarial13_hostile_definitions_are_refused_in_plain_words(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // A top-level step named like an iteration step.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F[0].B", "Type": "Pass", "Arguments": {}},
               {"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 1,
                 "ForEachBody": pass_body()}}]),
    );
    refused(&app, "brackets", def).await;
    // A body step named like an iteration step.
    let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1,
        "ForEachBody": [{"Name": "F[0].B", "Type": "Pass", "Arguments": {}}]}));
    refused(&app, "bodybrackets", def).await;
    // Duplicate body names across two ForEach steps, and with a top-level step.
    let def = definition_with(
        json!([]),
        json!([{"Name": "B", "Type": "Pass", "Arguments": {}},
               {"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 1,
                 "ForEachBody": pass_body()}},
               {"Name": "G", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 1,
                 "ForEachBody": pass_body()}}]),
    );
    refused(&app, "dupes", def).await;
    // MaxConcurrency edge values.
    for bad in [
        json!(0),
        json!(1001),
        json!(-1),
        json!(1.5),
        json!("2"),
        json!(null),
        json!(4294967297u64),
    ] {
        let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": bad, "ForEachBody": pass_body()}));
        let text = refused(&app, "conc", def).await;
        assert!(text.contains("MaxConcurrency"), "{bad}: {text}");
    }
    // An empty body, a body that is not a list, a body step that is not an object.
    for body in [json!([]), json!({"Name": "B"}), json!([1]), json!(null)] {
        let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1, "ForEachBody": body}));
        refused(&app, "body", def).await;
    }
    // An empty literal list.
    let def = one_for_each(json!({"IterableItems": [], "MaxConcurrency": 1, "ForEachBody": pass_body()}));
    refused(&app, "empty", def).await;
    // A Selector on a Callback body step's undeclared output, and a bad Field.
    let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1,
        "ForEachBody": [{"Name": "C", "Type": "Callback",
            "Arguments": {"OutputParameters": [{"OutputName": "score", "OutputType": "Float"}]}}],
        "Selector": {"Pick": "MaxBy", "Field": {"Get": "IterationOutput.C.OutputParameters.nope"}}}));
    refused(&app, "cbsel", def).await;
    for field in [
        json!("x"),
        json!({"Get": "IterationOutput"}),
        json!({"Get": "Steps.C.Outputs"}),
        json!(null),
    ] {
        let def = one_for_each(
            json!({"IterableItems": [1], "MaxConcurrency": 1, "ForEachBody": pass_body(),
            "Selector": {"Pick": "MaxBy", "Field": field}}),
        );
        refused(&app, "selfield", def).await;
    }
    // A body step reading its own ForEach, by a path into its outputs.
    let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1,
        "ForEachBody": [{"Name": "B", "Type": "Pass",
            "Arguments": {"x": {"Get": "Steps.F.IterationOutputs[0].B.Outputs"}}}]}));
    refused(&app, "self", def).await;
    // A body step depending on its own ForEach.
    let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1,
        "ForEachBody": [{"Name": "B", "Type": "Pass", "DependsOn": ["F"], "Arguments": {}}]}));
    refused(&app, "selfdep", def).await;
    // A body cycle.
    let def = one_for_each(json!({"IterableItems": [1], "MaxConcurrency": 1,
        "ForEachBody": [{"Name": "A", "Type": "Pass", "DependsOn": ["B"], "Arguments": {}},
                        {"Name": "B", "Type": "Pass", "DependsOn": ["A"], "Arguments": {}}]}));
    refused(&app, "cycle", def).await;
    // A NUL in a literal item.
    let def = one_for_each(json!({"IterableItems": ["a\u{0}b"], "MaxConcurrency": 1, "ForEachBody": pass_body()}));
    refused(&app, "nul", def).await;

    // Odd but valid items: nested objects, strings holding JSON, nulls.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [{"a": {"b": [1, 2]}}, "{\"a\": {\"b\": [3]}}", null, "[1]"],
            "MaxConcurrency": 1000,
            "ForEachBody": [{"Name": "B", "Type": "Pass",
                "Arguments": {"i": {"Get": "ForEach.CurrentItem"}, "n": {"Get": "ForEach.CurrentIndex"}}}]}},
            {"Name": "After", "Type": "Pass", "Arguments": {"o": {"Get": "Steps.F.IterationOutputs[1].B.Outputs.i"}}}]),
    );
    app.create_pipeline("odd", def).await;
    let id = app.start("odd", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(
        f["properties"]["IterationOutputs"][0]["B"]["Outputs"]["i"],
        json!({"a": {"b": [1, 2]}})
    );
    assert_eq!(f["properties"]["IterationOutputs"][2]["B"]["Outputs"]["i"], Value::Null);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_the_iteration_pages_refuse_bad_queries(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", fan_out(dir.path(), json!([1, 2, 3]), 2, None))
        .await;
    let id = app.start("fe", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let base = format!("/v1/executions/{id}/steps");
    for (query, status) in [
        ("?for_each=Prep", 400),
        ("?for_each=Nope", 404),
        ("?for_each=", 404),
        ("?for_each=F%5B0%5D.Work", 400),
        ("?for_each=F&limit=0", 400),
        ("?for_each=F&limit=-1", 400),
        ("?for_each=F&limit=abc", 400),
        ("?for_each=F&limit=100000000000000000000", 400),
        ("?for_each=F&next_token=garbage", 400),
        ("?for_each=F&next_token=", 400),
        ("?for_each=F&next_token=eyJ4IjoxfQ", 400),
        ("?limit=0", 400),
        ("?limit=abc", 400),
        ("?next_token=garbage", 400),
        ("?for_each=F&bogus=1", 400),
    ] {
        let resp = app.get(&format!("{base}{query}")).await;
        assert_eq!(resp.status, status, "{query}: {}", resp.text);
        assert!(resp.body["error"]["message"].is_string(), "{query}: {}", resp.text);
        assert_human(&resp.text);
    }
    // A forged token (a valid encoding of any position) pages on from there, or is refused.
    let first = app.get(&format!("{base}?for_each=F&limit=1")).await.expect(200).clone();
    let token = first["next_token"].as_str().unwrap().to_string();
    let mut forged = token.clone();
    forged.push('A');
    let resp = app.get(&format!("{base}?for_each=F&limit=1&next_token={forged}")).await;
    assert!(resp.status == 400 || resp.status == 200, "{}", resp.text);
    // An iteration step and its log, by encoded name; an unknown one is 404.
    let step = app.get(&format!("{base}/F%5B1%5D.Work")).await;
    step.expect(200);
    app.get(&format!("{base}/F%5B1%5D.Work/logs")).await.expect(200);
    app.get(&format!("{base}/F%5B9%5D.Work"))
        .await
        .expect_error(404, "NotFound");
    app.get(&format!("{base}/F%5B9%5D.Work/logs"))
        .await
        .expect_error(404, "NotFound");
    app.get(&format!("{base}/F%5B-1%5D.Work"))
        .await
        .expect_error(404, "NotFound");
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_reused_for_each_shows_its_iterations_in_the_new_execution(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", fan_out(dir.path(), json!([1, 2, 3]), 2, None))
        .await;
    let first = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    // Only After is selected: F is reused, not run.
    let body = json!({"selective_execution": {"source_execution": first, "selected_steps": ["After"]}});
    let second = app.start("fe", body).await;
    assert_eq!(app.wait_terminal(&second).await["status"], "Succeeded");
    assert!(!app.step(&second, "F").await["reused_from"].is_null());
    let its = iteration_steps(&app, &second, 2).await;
    assert_eq!(its.len(), 6);
    // Each listed iteration step can be fetched by the name listed.
    for s in &its {
        let name = s["step_name"].as_str().unwrap().replace('[', "%5B").replace(']', "%5D");
        let resp = app.get(&format!("/v1/executions/{second}/steps/{name}")).await;
        assert_eq!(resp.status, 200, "{name} listed but not found: {}", resp.text);
    }
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_computed_items_over_the_limit_and_zero_items_end_cleanly(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.for_each_max_items = 3).await;
    let dir = tempfile::tempdir().unwrap();
    // Four items computed at run time, three allowed.
    let mut def = fan_out(dir.path(), json!({"Get": "Steps.Prep.Outputs.items"}), 5, None);
    def["Steps"][0]["Arguments"]["items"] = json!([1, 2, 3, 4]);
    app.create_pipeline("many", def).await;
    let id = app.start("many", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert!(f["failure_reason"].as_str().unwrap().contains("at most 3"), "{f}");
    assert_eq!(app.step(&id, "After").await["status"], "Skipped");

    // Zero items at run time, with a Selector, and a step reading Selected.
    let sel = json!({"Pick": "MaxBy", "Field": {"Get": "IterationOutput.Work.Outputs.square"}});
    let mut def = fan_out(dir.path(), json!({"Get": "Steps.Prep.Outputs.items"}), 5, Some(sel));
    def["Steps"][0]["Arguments"]["items"] = json!([]);
    def["Steps"][2]["Arguments"] = json!({"best": {"Get": "Steps.F.Selected.Outputs.square"}});
    app.create_pipeline("zero", def).await;
    let id = app.start("zero", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(app.step(&id, "F").await["status"], "Succeeded");
    // Nothing was selected: the reader fails with a clear reason, or sees null.
    let after = app.step(&id, "After").await;
    if done["status"] == "Failed" {
        let reason = after["failure_reason"].as_str().unwrap_or("");
        assert!(reason.contains("Selected"), "{after}");
        assert_human(reason);
    } else {
        assert_eq!(done["status"], "Succeeded", "{done}");
    }
    // A string parameter with a NUL, and a JSON string that is not a list.
    let mut def = fan_out(dir.path(), json!({"Get": "Parameters.Items"}), 5, None);
    def["Parameters"] = json!([{"Name": "Items", "Type": "String", "DefaultValue": "[1]"}]);
    app.create_pipeline("param", def).await;
    for (items, needle) in [
        ("[\"a\\u0000b\"]", "NUL"),
        ("{\"a\": 1}", "not a JSON list"),
        ("", "not a JSON list"),
    ] {
        let resp = app
            .post(
                "/v1/pipelines/param/executions",
                &json!({"parameters": {"Items": items}}),
            )
            .await;
        if resp.status == 400 {
            assert_human(&resp.text);
            continue;
        }
        let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
        let done = app.wait_terminal(&id).await;
        assert_eq!(done["status"], "Failed", "{done}");
        let f = app.step(&id, "F").await;
        assert!(f["failure_reason"].as_str().unwrap().contains(needle), "{items}: {f}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_for_each_in_a_condition_branch_taken_or_not(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = definition_with(
        json!([{"Name": "Go", "Type": "Boolean", "DefaultValue": true}]),
        json!([
            // SPEC 2.5: a Condition's branches are inline step objects.
            {"Name": "C", "Type": "Condition", "Arguments": {
                "Conditions": [{"Type": "Equals", "LeftValue": {"Get": "Parameters.Go"}, "RightValue": true}],
                "IfSteps": [{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1, 2],
                    "MaxConcurrency": 1, "ForEachBody": pass_body()}}],
                "ElseSteps": [{"Name": "E", "Type": "Pass", "Arguments": {}}]}},
            {"Name": "After", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}
        ]),
    );
    // A branch may hold any step, a ForEach too.
    app.post("/v1/pipelines", &json!({"name": "cond", "definition": def}))
        .await
        .expect(201);
    let id = app.start("cond", json!({"parameters": {"Go": true}})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["n"], 2);
    let id = app.start("cond", json!({"parameters": {"Go": false}})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(
        (&f["status"], &f["skip_reason"]),
        (&json!("Skipped"), &json!("ConditionNotMet")),
        "{f}"
    );
    assert_eq!(app.step(&id, "After").await["status"], "Skipped");
    let page = app
        .get(&format!("/v1/executions/{id}/steps?for_each=F"))
        .await
        .expect(200)
        .clone();
    assert_eq!(page["steps"], json!([]));
    app.stop().await;
}

/// A ForEach of `n` items whose body is one Callback step, then `After`.
fn callbacks(n: usize) -> Value {
    definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": (0..n).collect::<Vec<_>>(), "MaxConcurrency": 2,
            "ForEachBody": [{"Name": "Ask", "Type": "Callback",
                "Arguments": {"OutputParameters": [{"OutputName": "score", "OutputType": "Float"}]}}],
            "Selector": {"Pick": "MaxBy", "Field": {"Get": "IterationOutput.Ask.OutputParameters.score"}}}},
            {"Name": "After", "Type": "Pass", "Arguments": {"best": {"Get": "Steps.F.Selected.OutputParameters.score"}}}]),
    )
}

async fn token_of(app: &TestApp, id: &str, name: &str) -> String {
    // The iteration's row exists only once the ForEach has expanded.
    wait_until(std::time::Duration::from_secs(60), || async {
        let resp = app.get(&format!("/v1/executions/{id}/steps/{name}")).await;
        resp.body["metadata"]["callback"]["token"].as_str().map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("{name} never waited for its callback"))
}

#[sqlx::test]
async fn adversarial13_a_callback_per_iteration_succeeds_or_fails_the_for_each(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cb", callbacks(3)).await;
    let id = app.start("cb", json!({})).await;
    for (i, score) in [(0, 0.5), (1, 0.9), (2, 0.1)] {
        let token = token_of(&app, &id, &format!("F%5B{i}%5D.Ask")).await;
        app.post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {"score": score.to_string()}}),
        )
        .await
        .expect(200);
    }
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["best"], 0.9);

    // One fails: the other running one is completed after, the waiting one is skipped.
    let id = app.start("cb", json!({})).await;
    let t0 = token_of(&app, &id, "F%5B0%5D.Ask").await;
    let t1 = token_of(&app, &id, "F%5B1%5D.Ask").await;
    app.post(
        &format!("/v1/callbacks/{t0}/failure"),
        &json!({"failure_reason": "nope"}),
    )
    .await
    .expect(200);
    let resp = app
        .post(
            &format!("/v1/callbacks/{t1}/success"),
            &json!({"output_parameters": {"score": "1"}}),
        )
        .await;
    assert!(resp.status == 200 || resp.status == 409, "{}", resp.text);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Failed", "{f}");
    assert!(f["failure_reason"].as_str().unwrap().contains("F[0].Ask"), "{f}");
    // Retried: every iteration that did not succeed waits again.
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    for i in 0..3 {
        let step = app.step(&id, &format!("F%5B{i}%5D.Ask")).await;
        if step["status"] == "Succeeded" {
            continue;
        }
        let token = token_of(&app, &id, &format!("F%5B{i}%5D.Ask")).await;
        let resp = app
            .post(
                &format!("/v1/callbacks/{token}/success"),
                &json!({"output_parameters": {"score": "2"}}),
            )
            .await;
        resp.expect(200);
    }
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_body_fail_step_fails_the_for_each_and_no_retry_runs_it(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [1, 2, 3], "MaxConcurrency": 1,
            "ForEachBody": [{"Name": "Boom", "Type": "Fail",
                "Arguments": {"ErrorMessage": {"Get": "ForEach.CurrentItem"}}}]}},
            {"Name": "After", "Type": "Pass", "DependsOn": ["F"], "Arguments": {}}]),
    );
    app.create_pipeline("fail", def).await;
    let id = app.start("fail", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Failed", "{f}");
    let its = iteration_steps(&app, &id, 10).await;
    let statuses: Vec<&str> = its.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Failed", "Skipped", "Skipped"]);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_stop_while_iterations_wait_then_retry_twice_at_once(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let count = count_run(dir.path());
    // Iteration 0 waits for a file; iterations 1 and 2 wait for its slot.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [0, 1, 2], "MaxConcurrency": 1,
            "ForEachBody": [{"Name": "W", "Type": "Command", "Arguments": {"Shell": format!(
                "{count}; touch {d}/started; while [ ! -f {d}/go ]; do sleep 0.05; done")}}]}},
            {"Name": "After", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}]),
    );
    app.create_pipeline("stop", def).await;
    let id = app.start("stop", json!({})).await;
    wait_until(std::time::Duration::from_secs(60), || async {
        dir.path().join("started").exists().then_some(())
    })
    .await
    .expect("iteration 0 starts");
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Stopped", "{done}");
    assert_eq!(app.step(&id, "F").await["status"], "Stopped");
    std::fs::write(dir.path().join("go"), "").unwrap();
    // Two retries at once: one wins, the other conflicts.
    let path = format!("/v1/executions/{id}/retry");
    let empty = json!({});
    let (a, b) = tokio::join!(app.post(&path, &empty), app.post(&path, &empty));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["n"], 3);
    for i in 0..3 {
        assert!(runs_of(dir.path(), &format!("F[{i}].W")) >= 1);
    }
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_lost_lease_on_an_iteration_step_is_rescued(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.lease_seconds = 600).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [0, 1], "MaxConcurrency": 1,
            "ForEachBody": [{"Name": "W", "Type": "Command",
                "RetryPolicies": [{"ExceptionType": ["Step.SERVICE_FAULT"], "MaxAttempts": 3}],
                "Arguments": {"Shell": format!(
                "touch {d}/started-$STEPWISE_ATTEMPT-$N; \
                 if [ \"$STEPWISE_ATTEMPT\" = 1 ] && [ \"$N\" = 0 ]; then while [ ! -f {d}/go ]; do sleep 0.05; done; fi"),
                "Env": {"N": {"Get": "ForEach.CurrentItem"}}}}]}},
            {"Name": "After", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}]),
    );
    app.create_pipeline("lease", def).await;
    let id = app.start("lease", json!({})).await;
    wait_until(std::time::Duration::from_secs(60), || async {
        dir.path().join("started-1-0").exists().then_some(())
    })
    .await
    .expect("iteration 0 starts");
    sqlx::query("update step_runs set lease_expires_at = now() - interval '1 hour' where step_name = 'F[0].W'")
        .execute(&app.db)
        .await
        .unwrap();
    let done = app.wait_terminal(&id).await;
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(done["status"], "Succeeded", "{done}");
    let w = app.step(&id, "F%5B0%5D.W").await;
    assert!(w["attempt_count"].as_i64().unwrap() >= 2, "{w}");
    assert_eq!(app.step(&id, "F").await["status"], "Succeeded");
    app.stop().await;
}

/// A ForEach over the objects of parameter `Items` whose body step reads the
/// item's `n`, a parameter `Scale`, and a CacheInputs file.
fn objects(dir: &std::path::Path) -> Value {
    let count = count_run(dir);
    let input = dir.join("input.txt");
    definition_with(
        json!([{"Name": "Items", "Type": "String", "DefaultValue": "[]"},
               {"Name": "Scale", "Type": "Integer", "DefaultValue": 1}]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
        "IterableItems": {"Get": "Parameters.Items"}, "MaxConcurrency": 4,
        "ForEachBody": [
            {"Name": "Work", "Type": "Command", "Arguments": {
                "Shell": format!("{count}; echo \"{{\\\"v\\\": $((N * S))}}\" > $STEPWISE_OUTPUTS"),
                "Env": {"N": {"Get": "ForEach.CurrentItem.n"}, "S": {"Get": "Parameters.Scale"}},
                "CacheInputs": [input.display().to_string()]}},
            {"Name": "Tag", "Type": "Pass", "Arguments": {"v": {"Get": "Steps.Work.Outputs.v"}}}
        ]}}]),
    )
}

fn runs_per_item(dir: &std::path::Path, n: usize) -> Vec<usize> {
    (0..n).map(|i| runs_of(dir, &format!("F[{i}].Work"))).collect()
}

/// Plans then runs `body`; the plan's counts must equal what ran.
async fn plan_and_run(app: &TestApp, dir: &std::path::Path, body: Value, n: usize) -> (String, Value) {
    let plan = app
        .post("/v1/pipelines/obj/executions/plan", &body)
        .await
        .expect(200)
        .clone();
    let f = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "F")
        .unwrap()
        .clone();
    let before = runs_per_item(dir, n);
    let id = app.start("obj", body).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let after = runs_per_item(dir, n);
    let ran: Vec<usize> = (0..n).filter(|&i| after[i] > before[i]).collect();
    let its = &f["iterations"];
    if f["verdict"] == "Run" || !its.is_null() {
        let planned: Vec<usize> = its["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(planned, ran, "plan {f} vs ran {ran:?}");
        assert_eq!(its["run"].as_u64().unwrap() as usize, ran.len(), "{f}");
    } else {
        assert!(ran.is_empty(), "plan {f} vs ran {ran:?}");
    }
    (id, f)
}

#[sqlx::test]
async fn adversarial13_item_level_reuse_with_objects_duplicates_and_changed_inputs(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.txt"), "v1").unwrap();
    app.create_pipeline("obj", objects(dir.path())).await;
    let items = json!([{"n": 1, "k": "a"}, {"k": "b", "n": 2}, {"n": 1, "k": "a"}]).to_string();
    let first = app.start("obj", json!({"parameters": {"Items": items}})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    assert_eq!(runs_per_item(dir.path(), 3), [1, 1, 1]);

    // Reordered, key order changed, a duplicate: nothing runs.
    let items = json!([{"k": "a", "n": 1}, {"n": 1, "k": "a"}, {"n": 2, "k": "b"}]).to_string();
    let sel = |source: &str| json!({"source_execution": source, "selected_steps": "changed"});
    let body = json!({"parameters": {"Items": items}, "selective_execution": sel(&first)});
    let (second, _) = plan_and_run(&app, dir.path(), body, 3).await;
    assert_eq!(runs_per_item(dir.path(), 3), [1, 1, 1]);

    // A third copy of a duplicated item: only it runs.
    let items = json!([{"k": "a", "n": 1}, {"n": 1, "k": "a"}, {"n": 2, "k": "b"}, {"n": 1, "k": "a"}]).to_string();
    let body = json!({"parameters": {"Items": items.clone()}, "selective_execution": sel(&second)});
    let (third, _) = plan_and_run(&app, dir.path(), body, 4).await;
    assert_eq!(runs_per_item(dir.path(), 4), [1, 1, 1, 1]);

    // The CacheInputs file changed: every iteration runs.
    std::fs::write(dir.path().join("input.txt"), "v2").unwrap();
    let body = json!({"parameters": {"Items": items.clone()}, "selective_execution": sel(&third)});
    let (fourth, _) = plan_and_run(&app, dir.path(), body, 4).await;
    assert_eq!(runs_per_item(dir.path(), 4), [2, 2, 2, 2]);

    // A parameter the body reads changed: every iteration runs.
    let body = json!({"parameters": {"Items": items, "Scale": 3}, "selective_execution": sel(&fourth)});
    let (fifth, _) = plan_and_run(&app, dir.path(), body, 4).await;
    assert_eq!(runs_per_item(dir.path(), 4), [3, 3, 3, 3]);
    let f = app.step(&fifth, "F").await;
    assert_eq!(f["properties"]["IterationOutputs"][2]["Tag"]["Outputs"]["v"], 6);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_failure_outside_ends_a_for_each_whose_iterations_wait(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // X fails once iteration 0 has started; iteration 0 goes on until the
    // test sees X failed; iterations 1 and 2 wait for its slot.
    let def = definition_with(
        json!([]),
        json!([
            {"Name": "X", "Type": "Command", "Arguments": {"Shell": format!(
                "while [ ! -f {d}/started ]; do sleep 0.05; done; exit 1")}},
            {"Name": "F", "Type": "ForEach", "Arguments": {
                "IterableItems": [0, 1, 2], "MaxConcurrency": 1,
                "ForEachBody": [{"Name": "W", "Type": "Command", "Arguments": {"Shell": format!(
                    "touch {d}/started; while [ ! -f {d}/go ]; do sleep 0.05; done")}}]}},
            {"Name": "After", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}
        ]),
    );
    app.create_pipeline("outside", def).await;
    let id = app.start("outside", json!({})).await;
    app.wait_step(&id, "X", |s| s["status"] == "Failed").await;
    std::fs::write(dir.path().join("go"), "").unwrap();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let reason = done["failure_reason"].as_str().unwrap();
    assert!(reason.contains("\"X\""), "the original failure is kept: {reason}");
    let f = app.step(&id, "F").await;
    assert!(matches!(f["status"].as_str(), Some("Failed" | "Stopped")), "{f}");
    let its = iteration_steps(&app, &id, 10).await;
    let statuses: Vec<&str> = its.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Succeeded", "Skipped", "Skipped"]);
    assert_eq!(app.step(&id, "After").await["status"], "Skipped");
    // A retry runs the rest.
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "X fails again: {done}");
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_ten_thousand_and_one_items_at_run_time_fail_cleanly(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = definition_with(
        json!([{"Name": "Items", "Type": "String", "DefaultValue": "[]"}]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": {"Get": "Parameters.Items"}, "MaxConcurrency": 1000,
            "ForEachBody": pass_body()}}]),
    );
    app.create_pipeline("big", def).await;
    let items = serde_json::to_string(&(0..10_001).collect::<Vec<u32>>()).unwrap();
    let body = json!({"parameters": {"Items": items}});
    let plan = app.post("/v1/pipelines/big/executions/plan", &body).await;
    assert!(plan.status == 200 || plan.status == 400, "{}", plan.text);
    assert_human(&plan.text);
    let resp = app.post("/v1/pipelines/big/executions", &body).await;
    if resp.status == 400 {
        assert_human(&resp.text);
    } else {
        let id = resp.expect(201)["execution_id"].as_str().unwrap().to_string();
        let done = app.wait_terminal(&id).await;
        assert_eq!(done["status"], "Failed", "{done}");
        let f = app.step(&id, "F").await;
        assert!(f["failure_reason"].as_str().unwrap().contains("at most 10000"), "{f}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_stop_while_callbacks_wait_ends_every_iteration(db: PgPool) {
    let app = TestApp::spawn(db).await;
    app.create_pipeline("cb", callbacks(4)).await;
    let id = app.start("cb", json!({})).await;
    let t0 = token_of(&app, &id, "F%5B0%5D.Ask").await;
    token_of(&app, &id, "F%5B1%5D.Ask").await;
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Stopped", "{done}");
    assert_eq!(app.step(&id, "F").await["status"], "Stopped");
    let resp = app
        .post(
            &format!("/v1/callbacks/{t0}/success"),
            &json!({"output_parameters": {"score": "1"}}),
        )
        .await;
    assert!(resp.status == 409 || resp.status == 404, "{}", resp.text);
    let its = iteration_steps(&app, &id, 10).await;
    let statuses: Vec<&str> = its.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Stopped", "Stopped", "Skipped", "Skipped"]);
    // Retried: the four wait again; all answered, it succeeds.
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    for i in 0..4 {
        let token = token_of(&app, &id, &format!("F%5B{i}%5D.Ask")).await;
        if token == t0 {
            panic!("iteration 0 kept its cancelled token");
        }
        app.post(
            &format!("/v1/callbacks/{token}/success"),
            &json!({"output_parameters": {"score": i.to_string()}}),
        )
        .await
        .expect(200);
    }
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["best"], 3.0);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_reads_into_a_for_each_are_checked_against_its_body_steps(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let body = json!([{"Name": "C", "Type": "Callback",
        "Arguments": {"OutputParameters": [{"OutputName": "score", "OutputType": "Float"}]}}]);
    let sel = json!({"Pick": "MaxBy", "Field": {"Get": "IterationOutput.C.OutputParameters.score"}});
    for read in [
        "Steps.F.Selected.OutputParameters.nope",
        "Steps.F.Selected.Outputs.score",
        "Steps.F.IterationOutputs[0].C.Outputs",
        "Steps.F.IterationOutputs[0].C.OutputParameters.nope",
    ] {
        let def = definition_with(
            json!([]),
            json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 1,
                     "ForEachBody": body.clone(), "Selector": sel.clone()}},
                   {"Name": "After", "Type": "Pass", "Arguments": {"x": {"Get": read}}}]),
        );
        let text = refused(&app, "reads", def).await;
        assert!(text.contains("C"), "{read}: {text}");
    }
    // What the body step has is accepted.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 1,
                 "ForEachBody": body, "Selector": sel}},
               {"Name": "After", "Type": "Pass", "Arguments": {
                   "x": {"Get": "Steps.F.Selected.OutputParameters.score"},
                   "y": {"Get": "Steps.F.IterationOutputs[0].C.OutputParameters.score"},
                   "z": {"Get": "Steps.F.IterationOutputs[0].C"}}}]),
    );
    app.create_pipeline("good", def).await;
    app.stop().await;
}

/// The indexes of the iterations of `F` in which some step did not take
/// its outputs from the source.
async fn iterations_that_ran(app: &TestApp, id: &str) -> Vec<u64> {
    let mut ran: Vec<u64> = iteration_steps(app, id, 50)
        .await
        .iter()
        .filter(|s| s["reused_from"].is_null())
        .map(|s| s["iteration"]["index"].as_u64().unwrap())
        .collect();
    ran.dedup();
    ran
}

#[sqlx::test]
async fn adversarial13_the_plan_agrees_when_an_upstream_step_read_by_the_body_changed(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("up", fan_out(dir.path(), json!([1, 2, 3]), 3, None))
        .await;
    let first = app.start("up", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    // Prep's output, which every Report reads, changes.
    let mut def = app.get("/v1/pipelines/up").await.expect(200)["definition"].clone();
    def["Steps"][0]["Arguments"]["prefix"] = json!("q");
    app.put("/v1/pipelines/up", &json!({"definition": def}))
        .await
        .expect(200);
    let body = json!({"selective_execution": {"source_execution": first, "selected_steps": "changed"}});
    let plan = app
        .post("/v1/pipelines/up/executions/plan", &body)
        .await
        .expect(200)
        .clone();
    let f = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "F")
        .unwrap()
        .clone();
    let second = app.start("up", body).await;
    assert_eq!(app.wait_terminal(&second).await["status"], "Succeeded");
    let ran = iterations_that_ran(&app, &second).await;
    assert_eq!(ran, [0, 1, 2], "every Report reads the changed Prep");
    assert_eq!(f["iterations"]["run"], 3, "the plan says what runs: {f}");
    let out = app.step(&second, "F").await;
    assert_eq!(
        out["properties"]["IterationOutputs"][1]["Report"]["Outputs"]["prefix"],
        "q"
    );
    // The Work steps did not run again.
    assert_eq!(runs_of(dir.path(), "F[1].Work"), 1);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_retry_after_a_selector_failure_ends(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = json!({"Pick": "MaxBy", "Field": {"Get": "IterationOutput.Report.Outputs.prefix"}});
    app.create_pipeline("badsel", fan_out(dir.path(), json!([1, 2]), 3, Some(bad)))
        .await;
    let id = app.start("badsel", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Failed");
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert!(f["failure_reason"].as_str().unwrap().contains("not a number"), "{f}");
    assert_eq!(runs_of(dir.path(), "F[0].Work"), 1, "succeeded iterations are kept");
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_long_names_string_items_and_a_bad_item_path(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let f = "F".repeat(64);
    let b = "B".repeat(64);
    // The longest names, an item that is a string holding a JSON object,
    // and one that is a plain string read by a path: that iteration fails
    // with a clear reason, the others end, the ForEach fails.
    let def = definition_with(
        json!([]),
        json!([{"Name": f, "Type": "ForEach", "Arguments": {
            "IterableItems": ["{\"name\": \"a\"}", {"name": "b"}, "plain", {"other": 1}], "MaxConcurrency": 4,
            "ForEachBody": [{"Name": b, "Type": "Command", "Arguments": {
                "Shell": "echo \"{\\\"n\\\": \\\"$N\\\"}\" > $STEPWISE_OUTPUTS",
                "Env": {"N": {"Get": "ForEach.CurrentItem.name"}}}}]}}]),
    );
    app.create_pipeline("long", def).await;
    let id = app.start("long", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let page = app
        .get(&format!("/v1/executions/{id}/steps?for_each={f}&limit=10"))
        .await
        .expect(200)
        .clone();
    let steps = page["steps"].as_array().unwrap();
    let statuses: Vec<&str> = steps.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Succeeded", "Succeeded", "Failed", "Failed"], "{page}");
    assert_eq!(steps[0]["properties"]["Outputs"]["n"], "a");
    let reason = steps[2]["failure_reason"].as_str().unwrap();
    assert!(reason.contains("name"), "{reason}");
    assert_human(reason);
    let one = app.get(&format!("/v1/executions/{id}/steps/{f}%5B3%5D.{b}/logs")).await;
    assert!(one.status == 200 || one.status == 404, "{}", one.text);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_second_or_stale_expansion_makes_no_rows(db: PgPool) {
    use stepwise::engine::for_each::{expand, Expanded};
    // No workers: the test claims the ForEach by hand, as a worker would.
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 600;
    })
    .await;
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1, 2], "MaxConcurrency": 1,
            "ForEachBody": pass_body()}}]),
    );
    app.create_pipeline("twice", def).await;
    let execution: uuid::Uuid = app.start("twice", json!({})).await.parse().unwrap();
    let claimed = stepwise::store::steps::claim(&app.db, uuid::Uuid::now_v7(), 10, 600.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let f = &claimed[0];
    let items = [json!(1), json!(2)];
    assert_eq!(
        expand(&app.db, f.id, f.attempt, &items).await.unwrap(),
        Expanded::Waiting
    );
    // The same expansion again (a worker retrying a report whose commit it
    // did not see): no second set of rows, no error; it still waits.
    let again = expand(&app.db, f.id, f.attempt, &items).await;
    assert!(matches!(again, Ok(Expanded::Waiting)), "{again:?}");
    // A stale attempt.
    let stale = expand(&app.db, f.id, f.attempt - 1, &items).await;
    assert!(matches!(stale, Ok(Expanded::Stale)), "{stale:?}");
    let rows: i64 = sqlx::query_scalar("select count(*) from step_runs where execution_id = $1 and parent = 'F'")
        .bind(execution)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_callbacks_that_time_out_in_iterations_end_the_for_each(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.lease_seconds = 1).await;
    let mut def = callbacks(3);
    def["Steps"][0]["Arguments"]["ForEachBody"][0]["Arguments"]["TimeoutSeconds"] = json!(1);
    app.create_pipeline("cbt", def).await;
    let id = app.start("cbt", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Failed", "{f}");
    let its = iteration_steps(&app, &id, 10).await;
    assert_eq!(its[0]["error_type"], "Callback.TIMEOUT", "{}", its[0]);
    assert_eq!(its[2]["status"], "Skipped");
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_item_reuse_from_a_source_whose_body_steps_were_cache_hits(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.txt"), "v1").unwrap();
    let mut def = objects(dir.path());
    def["Steps"][0]["Arguments"]["ForEachBody"][0]["CacheConfig"] = json!({"Enabled": true, "ExpireAfter": "P1D"});
    app.create_pipeline("obj", def).await;
    let items = json!([{"n": 1}, {"n": 2}]).to_string();
    let first = app.start("obj", json!({"parameters": {"Items": items.clone()}})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    // The second run takes both from the cache.
    let second = app.start("obj", json!({"parameters": {"Items": items}})).await;
    assert_eq!(app.wait_terminal(&second).await["status"], "Succeeded");
    assert_eq!(app.step(&second, "F%5B1%5D.Work").await["cache"]["status"], "hit");
    assert_eq!(runs_per_item(dir.path(), 2), [1, 1]);
    // "changed" against the run of cache hits, one item added: the plan
    // and the run agree, and the two old items are reused.
    let items = json!([{"n": 1}, {"n": 2}, {"n": 3}]).to_string();
    let body = json!({"parameters": {"Items": items},
                      "selective_execution": {"source_execution": second, "selected_steps": "changed"}});
    let (third, f) = plan_and_run(&app, dir.path(), body, 3).await;
    assert_eq!(f["iterations"]["reuse"], 2, "{f}");
    assert_eq!(iterations_that_ran(&app, &third).await, [2]);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_a_stop_during_expansion_then_a_retry_runs_it(db: PgPool) {
    use stepwise::engine::for_each::{expand, Expanded};
    let app = TestApp::spawn_with(db, |c| {
        c.worker.concurrency = 0;
        c.worker.lease_seconds = 600;
    })
    .await;
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1, 2], "MaxConcurrency": 1,
            "ForEachBody": pass_body()}},
            {"Name": "After", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}]),
    );
    app.create_pipeline("stopexp", def).await;
    let id = app.start("stopexp", json!({})).await;
    let claimed = stepwise::store::steps::claim(&app.db, uuid::Uuid::now_v7(), 10, 600.0)
        .await
        .unwrap();
    let f = &claimed[0];
    // The stop lands while the worker resolves the items.
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let items = [json!(1), json!(2)];
    assert_eq!(expand(&app.db, f.id, f.attempt, &items).await.unwrap(), Expanded::Stale);
    // The worker says so, as it does for a stale expansion.
    let stopped = stepwise::engine::StepOutcome::Stopped {
        message: "the execution was stopped before the iterations were made".into(),
    };
    stepwise::engine::complete_attempt(&app.db, f.id, f.attempt, stopped, None)
        .await
        .unwrap();
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Stopped", "{done}");
    assert_eq!(app.step(&id, "F").await["status"], "Stopped");
    // Retried, with workers this time: F expands anew and the run succeeds.
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let workers = TestApp::spawn(app.db.clone()).await;
    let done = workers.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(workers.step(&id, "After").await["properties"]["Outputs"]["n"], 2);
    workers.stop().await;
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_reading_an_iteration_past_the_end_fails_clearly(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": [1, 2], "MaxConcurrency": 2,
            "ForEachBody": pass_body()}},
            {"Name": "After", "Type": "Pass", "Arguments": {"x": {"Get": "Steps.F.IterationOutputs[5].B.Outputs.i"}}}]),
    );
    app.create_pipeline("past", def).await;
    let id = app.start("past", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let after = app.step(&id, "After").await;
    let reason = after["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("IterationOutputs") || reason.contains("[5]"),
        "{reason}"
    );
    assert_human(reason);
    app.stop().await;
}

#[sqlx::test]
async fn adversarial13_iterations_of_a_reused_for_each_say_they_were_reused(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    app.create_pipeline("fe", fan_out(dir.path(), json!([1, 2]), 2, None))
        .await;
    let first = app.start("fe", json!({})).await;
    assert_eq!(app.wait_terminal(&first).await["status"], "Succeeded");
    let body = json!({"selective_execution": {"source_execution": first, "selected_steps": ["After"]}});
    let second = app.start("fe", body).await;
    assert_eq!(app.wait_terminal(&second).await["status"], "Succeeded");
    for s in iteration_steps(&app, &second, 10).await {
        assert!(!s["reused_from"].is_null(), "{s}");
    }
    let one = app.step(&second, "F%5B0%5D.Work").await;
    assert!(!one["reused_from"].is_null(), "{one}");
    app.stop().await;
}
