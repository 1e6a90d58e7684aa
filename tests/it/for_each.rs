//! ForEach (issue 13): iterations as real step runs named `F[i].Body`,
//! items from a literal list, a parameter or a step's outputs,
//! `MaxConcurrency`, the Selector, failures and retries inside an
//! iteration, stop, and the steps API's pages of iterations.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{count_run, definition_with, runs_of, wait_until, TestApp};

/// A ForEach `F` over `items` whose body is `Work` (a command that writes
/// the item's square as its output, counting its runs) then `Report` (a
/// Pass that reads `Work` and the item), followed by `After`, which reads
/// the ForEach's outputs.
pub fn fan_out(dir: &std::path::Path, items: Value, max: u32, selector: Option<Value>) -> Value {
    let count = count_run(dir);
    let mut for_each = json!({
        "Name": "F", "Type": "ForEach",
        "Arguments": {
            "IterableItems": items,
            "MaxConcurrency": max,
            "ForEachBody": [
                {"Name": "Work", "Type": "Command",
                 "Arguments": {"Shell": format!(
                     "echo \"$STEPWISE_STEP_NAME\" >> {d}/names; {count}; \
                      if [ -f {d}/fail-$N ]; then exit 3; fi; \
                      echo \"{{\\\"square\\\": $((N * N))}}\" > $STEPWISE_OUTPUTS", d = dir.display()),
                   "Env": {"N": {"Get": "ForEach.CurrentItem"}}}},
                {"Name": "Report", "Type": "Pass",
                 "Arguments": {"item": {"Get": "ForEach.CurrentItem"}, "index": {"Get": "ForEach.CurrentIndex"},
                               "square": {"Get": "Steps.Work.Outputs.square"},
                               "prefix": {"Get": "Steps.Prep.Outputs.prefix"}}}
            ]
        }
    });
    if let Some(selector) = selector {
        for_each["Arguments"]["Selector"] = selector;
    }
    definition_with(
        json!([]),
        json!([
            {"Name": "Prep", "Type": "Pass", "Arguments": {"prefix": "p"}},
            for_each,
            {"Name": "After", "Type": "Pass",
             "Arguments": {"first": {"Get": "Steps.F.IterationOutputs[0].Report.Outputs.square"},
                           "count": {"Get": "Steps.F.InputItemCount"}}}
        ]),
    )
}

async fn run(app: &TestApp, pipeline: &str, body: Value) -> (String, Value) {
    let id = app.start(pipeline, body).await;
    let done = app.wait_terminal(&id).await;
    (id, done)
}

/// Every iteration step of `F`, paging `limit` at a time.
pub async fn iteration_steps(app: &TestApp, id: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/v1/executions/{id}/steps?for_each=F&limit={limit}");
        if let Some(t) = &token {
            path.push_str(&format!("&next_token={t}"));
        }
        let page = app.get(&path).await.expect(200).clone();
        let steps = page["steps"].as_array().unwrap();
        assert!(steps.len() <= limit);
        out.extend(steps.iter().cloned());
        match page["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

#[sqlx::test]
async fn a_literal_list_runs_each_iteration_as_named_steps(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let selector = json!({"Pick": "MaxBy", "Field": {"Get": "IterationOutput.Work.Outputs.square"}});
    app.create_pipeline("fe", fan_out(dir.path(), json!([3, 1, 4]), 2, Some(selector)))
        .await;
    let (id, done) = run(&app, "fe", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");

    // The top-level list shows the ForEach, not its iterations.
    let top: Vec<String> = app
        .steps(&id)
        .await
        .iter()
        .map(|s| s["step_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(top, ["Prep", "F", "After"]);
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Succeeded");
    let props = &f["properties"];
    assert_eq!(props["InputItemCount"], 3);
    assert_eq!(props["TotalStepCount"], 6);
    assert_eq!(props["SucceededStepCount"], 6);
    assert_eq!(props["Status"], "Succeeded");
    assert_eq!(props["IterationOutputs"][1]["Work"]["Outputs"]["square"], 1);
    assert_eq!(
        props["IterationOutputs"][2]["Report"]["Outputs"],
        json!({"item": 4, "index": 2, "square": 16, "prefix": "p"})
    );
    // MaxBy square: the item 4.
    assert_eq!(props["Selected"]["Outputs"]["square"], 16);
    let after = app.step(&id, "After").await;
    assert_eq!(after["properties"]["Outputs"], json!({"first": 9, "count": 3}));

    // The iterations, paged two at a time, in item order then body order.
    let its = iteration_steps(&app, &id, 2).await;
    let names: Vec<&str> = its.iter().map(|s| s["step_name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "F[0].Work",
            "F[0].Report",
            "F[1].Work",
            "F[1].Report",
            "F[2].Work",
            "F[2].Report"
        ]
    );
    assert_eq!(
        its[2]["iteration"],
        json!({"for_each": "F", "index": 1, "item": 1, "body_step": "Work"})
    );
    // Each iteration step is a real step run, with its own log.
    let work = app.step(&id, "F[2].Work").await;
    assert_eq!(work["attempt_count"], 1);
    assert_eq!(work["dependencies"], json!([]));
    let report = app.step(&id, "F[2].Report").await;
    assert_eq!(report["dependencies"], json!(["Prep", "F[2].Work"]));
    let log = app.get(&format!("/v1/executions/{id}/steps/F%5B2%5D.Work/logs")).await;
    assert_eq!(log.status, 200);
    for i in 0..3 {
        assert_eq!(runs_of(dir.path(), &format!("F[{i}].Work")), 1);
    }
    app.stop().await;
}

#[sqlx::test]
async fn items_come_from_a_parameter_or_a_step_output(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    // A parameter holding a JSON list string, as the SageMaker SDK passes it.
    let mut def = fan_out(dir.path(), json!({"Get": "Parameters.Items"}), 5, None);
    def["Parameters"] = json!([{"Name": "Items", "Type": "String", "DefaultValue": "[2, 5]"}]);
    app.create_pipeline("param", def).await;
    let (id, done) = run(&app, "param", json!({"parameters": {"Items": "[6, 7, 8]"}})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["properties"]["InputItemCount"], 3);
    assert_eq!(f["properties"]["IterationOutputs"][2]["Work"]["Outputs"]["square"], 64);

    // A list a step computed.
    let mut def = fan_out(dir.path(), json!({"Get": "Steps.Prep.Outputs.items"}), 5, None);
    def["Steps"][0]["Arguments"]["items"] = json!([10, 11]);
    app.create_pipeline("computed", def).await;
    let (id, done) = run(&app, "computed", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(
        f["properties"]["IterationOutputs"][1]["Report"]["Outputs"]["square"],
        121
    );
    assert_eq!(f["metadata"]["for_each"]["InputItemCount"], 2);

    // A value that is not a list fails the ForEach with a clear reason.
    let mut def = fan_out(dir.path(), json!({"Get": "Steps.Prep.Outputs.prefix"}), 5, None);
    def["Steps"][0]["Arguments"]["items"] = json!(1);
    app.create_pipeline("notalist", def).await;
    let (id, done) = run(&app, "notalist", json!({})).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert!(f["failure_reason"].as_str().unwrap().contains("not a JSON list"), "{f}");
    // An empty list: nothing to do, and the ForEach succeeds.
    let mut def = fan_out(dir.path(), json!({"Get": "Steps.Prep.Outputs.items"}), 5, None);
    def["Steps"][0]["Arguments"]["items"] = json!([]);
    def["Steps"][2]["Arguments"] = json!({"count": {"Get": "Steps.F.InputItemCount"}});
    app.create_pipeline("empty", def).await;
    let (id, done) = run(&app, "empty", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["count"], 0);
    app.stop().await;
}

/// Intervals of the body command of each iteration, read from the lines
/// `start <ns>` / `end <ns>` it appended to its own file.
fn max_overlap(dir: &std::path::Path) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("span-") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (kind, at) = line.split_once(' ').unwrap();
            let at: u128 = at.trim().parse().unwrap();
            events.push((at, if kind == "start" { 1 } else { -1 }));
        }
    }
    // Ends sort before starts at the same instant.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[sqlx::test]
async fn max_concurrency_bounds_the_iterations_running_at_once(db: PgPool) {
    let app = TestApp::spawn_with(db, |c| c.worker.concurrency = 8).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Each iteration: a first step that records its start and then waits
    // until three iterations have started (so fewer than three at once never
    // finishes: MaxConcurrency is how many run at once, docs/definition.md),
    // then a second one that records its end; an iteration holds its slot
    // until both have ended.
    let index = json!({"I": {"Get": "ForEach.CurrentIndex"}});
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
        "IterableItems": (0..12).collect::<Vec<_>>(), "MaxConcurrency": 3,
        "ForEachBody": [
            {"Name": "A", "Type": "Command", "Arguments": {"Shell": format!(
                "echo start $(date +%s%N) >> {d}/span-$I; touch {d}/started-$I; \
                 for _ in $(seq 1 1200); do \
                   [ $(ls {d} | grep -c '^started-') -ge 3 ] && exit 0; sleep 0.05; done; \
                 echo 'three iterations never ran at once' >&2; exit 1"), "Env": index}},
            {"Name": "B", "Type": "Command", "DependsOn": ["A"], "Arguments": {"Shell": format!(
                "echo end $(date +%s%N) >> {d}/span-$I"), "Env": index}}
        ]}}]),
    );
    app.create_pipeline("conc", def).await;
    let (_, done) = run(&app, "conc", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let overlap = max_overlap(dir.path());
    assert_eq!(overlap, 3, "{overlap} iterations ran at once; MaxConcurrency is 3");
    app.stop().await;
}

#[sqlx::test]
async fn the_selector_picks_by_min_and_a_bad_field_fails_the_for_each(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let min = json!({"Pick": "MinBy", "Field": {"Get": "IterationOutput.Report.Outputs.square"}});
    let mut def = fan_out(dir.path(), json!([5, -2, 3]), 3, Some(min));
    def["Steps"][2]["Arguments"] = json!({"best": {"Get": "Steps.F.Selected.Outputs.item"}});
    app.create_pipeline("min", def).await;
    let (id, done) = run(&app, "min", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "After").await["properties"]["Outputs"]["best"], -2);

    let bad = json!({"Pick": "MaxBy", "Field": {"Get": "IterationOutput.Report.Outputs.prefix"}});
    app.create_pipeline("badsel", fan_out(dir.path(), json!([1, 2]), 3, Some(bad)))
        .await;
    let (id, done) = run(&app, "badsel", json!({})).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["error_type"], "Step.INPUT_ERROR");
    assert!(f["failure_reason"].as_str().unwrap().contains("not a number"), "{f}");
    app.stop().await;
}

#[sqlx::test]
async fn a_retried_iteration_step_recovers_and_one_that_fails_for_good_fails_the_for_each(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    // Item 2 fails its first attempt only; a retry policy retries it.
    let mut def = fan_out(dir.path(), json!([1, 2, 3]), 1, None);
    let body = &mut def["Steps"][1]["Arguments"]["ForEachBody"][0];
    body["Arguments"]["Shell"] = json!(format!(
        "{}; if [ \"$N\" = 2 ] && [ \"$STEPWISE_ATTEMPT\" = 1 ]; then exit 3; fi; echo '{{\"square\": 1}}' > $STEPWISE_OUTPUTS",
        count_run(dir.path())
    ));
    body["RetryPolicies"] = json!([{"ExceptionType": ["Command.FAILED"], "IntervalSeconds": 1, "MaxAttempts": 2}]);
    app.create_pipeline("retry", def).await;
    let (id, done) = run(&app, "retry", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&id, "F[1].Work").await["attempt_count"], 2);

    // Item 2 always fails: with MaxConcurrency 1 the iteration after it
    // never starts, the ForEach fails naming the step, and so does the run.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fail-2"), "").unwrap();
    app.create_pipeline("fails", fan_out(dir.path(), json!([1, 2, 3]), 1, None))
        .await;
    let (id, done) = run(&app, "fails", json!({})).await;
    assert_eq!(done["status"], "Failed", "{done}");
    let reason = done["failure_reason"].as_str().unwrap();
    assert!(reason.contains("F[1].Work"), "{reason}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Failed");
    assert_eq!(f["error_type"], "ForEach.ITERATION_FAILED");
    assert!(f["failure_reason"].as_str().unwrap().contains("F[1].Work"), "{f}");
    let its = iteration_steps(&app, &id, 100).await;
    let status = |name: &str| {
        its.iter()
            .find(|s| s["step_name"] == name)
            .map(|s| s["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("F[0].Work"), "Succeeded");
    assert_eq!(status("F[1].Work"), "Failed");
    assert_eq!(status("F[1].Report"), "Skipped");
    assert_eq!(status("F[2].Work"), "Skipped");
    assert_eq!(app.step(&id, "After").await["status"], "Skipped");
    assert_eq!(runs_of(dir.path(), "F[2].Work"), 0);

    // Fixed, the execution is retried in place: only the failed iteration
    // and those that never ran run; the ForEach and After succeed.
    std::fs::remove_file(dir.path().join("fail-2")).unwrap();
    app.post(&format!("/v1/executions/{id}/retry"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(runs_of(dir.path(), "F[0].Work"), 1);
    assert_eq!(runs_of(dir.path(), "F[1].Work"), 2);
    assert_eq!(runs_of(dir.path(), "F[2].Work"), 1);
    let f = app.step(&id, "F").await;
    assert_eq!(f["properties"]["InputItemCount"], 3);
    assert_eq!(f["attempt_count"], 2);
    app.stop().await;
}

#[sqlx::test]
async fn a_stop_during_a_for_each_ends_it_stopped(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Each iteration step waits for a file that never comes: the test stops
    // the execution while two iterations run and one waits for a slot.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": [1, 2, 3], "MaxConcurrency": 2,
            "ForEachBody": [{"Name": "Wait", "Type": "Command", "Arguments": {"Shell": format!(
                "touch {d}/started-$STEPWISE_ATTEMPT-$(echo $STEPWISE_STEP_NAME | tr -d '[].'); \
                 while [ ! -f {d}/never ]; do sleep 0.05; done")}}]}},
            {"Name": "After", "Type": "Pass", "DependsOn": ["F"], "Arguments": {}}]),
    );
    app.create_pipeline("stop", def).await;
    let id = app.start("stop", json!({})).await;
    let started = wait_until(std::time::Duration::from_secs(60), || async {
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(started, Some(2), "two iterations start");
    app.post(&format!("/v1/executions/{id}/stop"), &json!({}))
        .await
        .expect(200);
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Stopped", "{done}");
    let f = app.step(&id, "F").await;
    assert_eq!(f["status"], "Stopped", "{f}");
    let its = iteration_steps(&app, &id, 10).await;
    let statuses: Vec<&str> = its.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Stopped", "Stopped", "Skipped"]);
    assert_eq!(its[2]["skip_reason"], "ExecutionStopped");
    assert_eq!(app.step(&id, "After").await["skip_reason"], "ExecutionStopped");
    app.stop().await;
}

#[sqlx::test]
async fn a_definition_with_a_bad_for_each_is_refused_with_each_problem(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let def = definition_with(
        json!([]),
        json!([
            {"Name": "Top", "Type": "Pass", "Arguments": {"x": {"Get": "Steps.Body1.Outputs"}}},
            {"Name": "Cur", "Type": "Pass", "Arguments": {"x": {"Get": "ForEach.CurrentItem"}}},
            {"Name": "F", "Type": "ForEach", "RetryPolicies": [{"ExceptionType": ["Step.SERVICE_FAULT"], "MaxAttempts": 2}],
             "Arguments": {"IterableItems": 5,
                "ForEachBody": [
                    {"Name": "Body1", "Type": "Pass", "Arguments": {"me": {"Get": "Steps.F.InputItemCount"}}},
                    {"Name": "Cond", "Type": "Condition", "Arguments": {"Conditions": []}}
                ],
                "Selector": {"Pick": "Biggest", "Field": {"Get": "IterationOutput.Nope.Outputs.x"}}}},
            {"Name": "G", "Type": "ForEach", "Arguments": {"IterableItems": [1], "MaxConcurrency": 0,
                "ForEachBody": [{"Name": "Body2", "Type": "Pass", "Arguments": {"o": {"Get": "Steps.Body1.Outputs"}}}]}}
        ]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "bad", "definition": def}))
        .await;
    let message = resp.expect_error(400, "ValidationError");
    let text = resp.text.clone();
    for needle in [
        "Body1 runs once per item inside ForEach F",
        "reads ForEach.CurrentItem, which only a step inside a ForEach",
        "is not retried itself",
        "IterableItems of ForEach step F must be a list",
        "needs MaxConcurrency",
        "which a ForEach body cannot hold",
        "cannot read that ForEach",
        "Selector.Pick of step F must be",
        "must be an integer from 1 to",
        "is a step of the body of ForEach F, which runs apart from ForEach G",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert!(!message.is_empty());
    // Too many literal items.
    let many: Vec<u32> = (0..10_001).collect();
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {"IterableItems": many, "MaxConcurrency": 1,
            "ForEachBody": [{"Name": "B", "Type": "Pass", "Arguments": {}}]}}]),
    );
    let resp = app
        .post("/v1/pipelines", &json!({"name": "many", "definition": def}))
        .await;
    resp.expect_error(400, "ValidationError");
    assert!(resp.text.contains("at most 10000 are allowed"), "{}", resp.text);
    app.stop().await;
}

/// Ten items, one body step; item 7 fails until `fail-7` is removed, and
/// only once the nine others have ended (so they all ran).
fn ten_items(dir: &std::path::Path) -> Value {
    let d = dir.display();
    let count = count_run(dir);
    definition_with(
        json!([{"Name": "Items", "Type": "String", "DefaultValue": "[0,1,2,3,4,5,6,7,8,9]"}]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
            "IterableItems": {"Get": "Parameters.Items"}, "MaxConcurrency": 10,
            "ForEachBody": [{"Name": "Work", "Type": "Command", "Arguments": {"Shell": format!(
                "{count}; if [ -f {d}/fail-$N ]; then \
                   while [ $(ls {d} | grep -c '^done-') -lt 9 ]; do sleep 0.05; done; exit 3; fi; \
                 touch {d}/done-$N; echo \"{{\\\"n\\\": $N}}\" > $STEPWISE_OUTPUTS"),
                "Env": {"N": {"Get": "ForEach.CurrentItem"}}}}]}},
            {"Name": "Sum", "Type": "Pass", "Arguments": {"n": {"Get": "Steps.F.InputItemCount"}}}]),
    )
}

fn runs_per_item(dir: &std::path::Path, n: usize) -> Vec<usize> {
    (0..n).map(|i| runs_of(dir, &format!("F[{i}].Work"))).collect()
}

async fn plan_of_f(app: &TestApp, pipeline: &str, body: &Value) -> Value {
    let plan = app
        .post(&format!("/v1/pipelines/{pipeline}/executions/plan"), body)
        .await
        .expect(200)
        .clone();
    assert_eq!(plan["errors"], json!([]), "{plan}");
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_name"] == "F")
        .unwrap()
        .clone()
}

#[sqlx::test]
async fn a_fixed_item_reruns_alone_and_a_changed_item_alone(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fail-7"), "").unwrap();
    app.create_pipeline("ten", ten_items(dir.path())).await;
    let (first, done) = run(&app, "ten", json!({})).await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(runs_per_item(dir.path(), 10), vec![1; 10]);

    // Fixed: "changed" selects F (it did not succeed); the plan says one
    // iteration runs, and that is what happens.
    std::fs::remove_file(dir.path().join("fail-7")).unwrap();
    let body = json!({"selective_execution": {"source_execution": first, "selected_steps": "changed"}});
    let f = plan_of_f(&app, "ten", &body).await;
    assert_eq!(f["verdict"], "Run", "{f}");
    let its = &f["iterations"];
    assert_eq!(
        (its["items"].clone(), its["reuse"].clone(), its["run"].clone()),
        (json!(10), json!(9), json!(1)),
        "{f}"
    );
    assert_eq!(its["runs"][0]["index"], 7);
    let (second, done) = run(&app, "ten", body).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let mut expected = vec![1; 10];
    expected[7] = 2;
    assert_eq!(runs_per_item(dir.path(), 10), expected);
    let steps = iteration_steps(&app, &second, 100).await;
    let reused = steps.iter().filter(|s| !s["reused_from"].is_null()).count();
    assert_eq!(reused, 9);
    assert_eq!(
        steps[0]["reused_from"]["reason"],
        "same item and inputs as its iteration in the source execution"
    );
    assert!(steps[7]["reused_from"].is_null());
    let outputs = &app.step(&second, "F").await["properties"]["IterationOutputs"];
    assert_eq!(outputs[7]["Work"]["Outputs"]["n"], 7);
    assert_eq!(outputs[3]["Work"]["Outputs"]["n"], 3);

    // One item changed, one added: the plan and the run agree, two run.
    let body = json!({"parameters": {"Items": "[0,1,2,3,4,5,6,7,8,42,10]"},
                      "selective_execution": {"source_execution": second, "selected_steps": "changed"}});
    let f = plan_of_f(&app, "ten", &body).await;
    let its = &f["iterations"];
    assert_eq!((its["reuse"].clone(), its["run"].clone()), (json!(9), json!(2)), "{f}");
    let planned: Vec<Value> = its["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].clone())
        .collect();
    assert_eq!(planned, vec![json!(42), json!(10)]);
    let (third, done) = run(&app, "ten", body).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let steps = iteration_steps(&app, &third, 4).await;
    let ran: Vec<Value> = steps
        .iter()
        .filter(|s| s["reused_from"].is_null())
        .map(|s| s["iteration"]["item"].clone())
        .collect();
    assert_eq!(ran, planned);
    assert_eq!(runs_of(dir.path(), "F[9].Work"), 2);
    assert_eq!(runs_of(dir.path(), "F[10].Work"), 1);
    app.stop().await;
}

#[sqlx::test]
async fn a_dag_body_caches_per_step_and_keeps_to_max_parallel_steps(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let dir = tempfile::tempdir().unwrap();
    let count = count_run(dir.path());
    let cache = json!({"Enabled": true, "ExpireAfter": "P1D"});
    // A diamond body: Split feeds Left and Right, Join reads both.
    let def = definition_with(
        json!([]),
        json!([{"Name": "F", "Type": "ForEach", "Arguments": {
        "IterableItems": ["a", "b", "c"], "MaxConcurrency": 3,
        "ForEachBody": [
            {"Name": "Split", "Type": "Command", "CacheConfig": cache,
             "Arguments": {"Shell": format!("{count}; echo \"{{\\\"v\\\": \\\"$V\\\"}}\" > $STEPWISE_OUTPUTS"),
                           "Env": {"V": {"Get": "ForEach.CurrentItem"}}}},
            {"Name": "Left", "Type": "Pass", "Arguments": {"l": {"Get": "Steps.Split.Outputs.v"}}},
            {"Name": "Right", "Type": "Command", "CacheConfig": cache,
             "Arguments": {"Shell": format!("{count}; echo \"{{\\\"r\\\": \\\"$V$V\\\"}}\" > $STEPWISE_OUTPUTS"),
                           "Env": {"V": {"Get": "Steps.Split.Outputs.v"}}}},
            {"Name": "Join", "Type": "Pass",
             "Arguments": {"l": {"Get": "Steps.Left.Outputs.l"}, "r": {"Get": "Steps.Right.Outputs.r"}}}
        ]}}]),
    );
    let resp = app
        .post(
            "/v1/pipelines",
            &json!({"name": "dag", "definition": def, "max_parallel_steps": 2}),
        )
        .await;
    resp.expect(201);
    let (first, done) = run(&app, "dag", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let f = app.step(&first, "F").await;
    assert_eq!(
        f["properties"]["IterationOutputs"][2]["Join"]["Outputs"],
        json!({"l": "c", "r": "cc"})
    );
    assert_eq!(f["properties"]["TotalStepCount"], 12);
    // The second run takes every cached body step from the cache, per
    // iteration, under the body step's name: nothing runs again.
    let (second, done) = run(&app, "dag", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    for i in 0..3 {
        assert_eq!(runs_of(dir.path(), &format!("F[{i}].Split")), 1);
        assert_eq!(runs_of(dir.path(), &format!("F[{i}].Right")), 1);
        let split = app.step(&second, &format!("F[{i}].Split")).await;
        assert_eq!(split["cache"]["status"], "hit", "{split}");
    }
    // One item's cached run was by another index: a hit all the same.
    let mut reordered = app.get("/v1/pipelines/dag").await.expect(200)["definition"].clone();
    reordered["Steps"][0]["Arguments"]["IterableItems"] = json!(["c", "a", "d"]);
    app.put("/v1/pipelines/dag", &json!({"definition": reordered}))
        .await
        .expect(200);
    let (third, done) = run(&app, "dag", json!({})).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(app.step(&third, "F[0].Split").await["cache"]["status"], "hit");
    assert_eq!(app.step(&third, "F[2].Split").await["cache"]["status"], "miss");
    assert_eq!(runs_of(dir.path(), "F[2].Split"), 2);
    app.stop().await;
}
