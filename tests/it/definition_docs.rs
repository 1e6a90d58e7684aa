//! The examples of the step reference, `docs/definition.md`, against a
//! server: every ```` ```json ```` block is marked with what it is
//! (`pipeline`, `step`, `refused` or `fragment`), complete definitions are
//! created (and those marked `run` or `fails` run to that end), single steps
//! are created as the only step of a definition, refused definitions
//! are refused with the messages the document quotes, and fragments are
//! parts of the examples that run.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::{
    helpers::{definition_with, TestApp},
    markdown::{self, Block},
};

const DOCUMENT: &str = "docs/definition.md";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A complete definition; `Some(status)`: started with its defaults, it ends so.
    Pipeline(Option<&'static str>),
    Step,
    Refused,
    Fragment,
}

/// What a `json` block's info string says it is; panics on anything else,
/// so no example goes untested by a typo.
fn kind(block: &Block) -> Kind {
    let words = block.words();
    match words[1..] {
        ["pipeline"] => Kind::Pipeline(None),
        ["pipeline", "run"] => Kind::Pipeline(Some("Succeeded")),
        ["pipeline", "fails"] => Kind::Pipeline(Some("Failed")),
        ["step"] => Kind::Step,
        ["refused"] => Kind::Refused,
        ["fragment"] => Kind::Fragment,
        _ => panic!(
            "{DOCUMENT} line {}: a json block must be marked pipeline [run|fails], step, refused or fragment, \
             got {:?}",
            block.line, block.info
        ),
    }
}

fn examples() -> Vec<(Block, Kind, Value)> {
    markdown::blocks(&markdown::read(DOCUMENT))
        .into_iter()
        .filter(|b| b.language() == "json")
        .map(|b| {
            let value = serde_json::from_str(&b.body)
                .unwrap_or_else(|e| panic!("{DOCUMENT} line {}: the example is not JSON: {e}", b.line));
            let kind = kind(&b);
            (b, kind, value)
        })
        .collect()
}

/// The document's text with every run of whitespace made one space, so a
/// quoted message may be wrapped over lines.
fn document_text() -> String {
    markdown::read(DOCUMENT)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `needle` is `haystack` or a value somewhere inside it.
fn holds(haystack: &Value, needle: &Value) -> bool {
    haystack == needle
        || match haystack {
            Value::Object(m) => m.values().any(|v| holds(v, needle)),
            Value::Array(a) => a.iter().any(|v| holds(v, needle)),
            _ => false,
        }
}

#[test]
fn every_example_is_marked_and_every_fragment_is_part_of_one_that_runs() {
    let examples = examples();
    for (block, kind, value) in &examples {
        if *kind == Kind::Fragment {
            assert!(
                examples
                    .iter()
                    .any(|(_, k, v)| matches!(k, Kind::Pipeline(Some(_))) && holds(v, value)),
                "{DOCUMENT} line {}: the fragment is in no example that runs",
                block.line
            );
        }
    }
    let count = |k: fn(&Kind) -> bool| examples.iter().filter(|(_, kind, _)| k(kind)).count();
    assert!(
        count(|k| matches!(k, Kind::Pipeline(Some("Succeeded")))) >= 4,
        "{examples:?}"
    );
    assert!(count(|k| matches!(k, Kind::Pipeline(Some("Failed")))) >= 1);
    assert!(count(|k| *k == Kind::Step) >= 5);
    assert!(count(|k| *k == Kind::Refused) >= 1);
}

#[sqlx::test]
async fn examples_are_accepted_and_run_as_described(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let text = document_text();
    let mut ran = 0;
    for (block, kind, value) in examples() {
        let at = format!("{DOCUMENT} line {}", block.line);
        let name = format!("doc-example-{}", block.line);
        let body = match kind {
            Kind::Fragment => continue,
            Kind::Step => json!({"name": name, "definition": definition_with(json!([]), json!([value]))}),
            Kind::Pipeline(_) | Kind::Refused => json!({"name": name, "definition": value}),
        };
        let resp = app.post("/v1/pipelines", &body).await;
        if kind == Kind::Refused {
            assert_eq!(resp.status, 400, "{at}: expected a refusal: {}", resp.text);
            // The document quotes the message of each issue.
            for detail in resp.body["error"]["details"].as_array().unwrap() {
                let message = detail["message"].as_str().unwrap();
                assert!(
                    text.contains(&format!("`{message}`")),
                    "{at}: the document does not quote the issue {detail}"
                );
                let path = detail["path"].as_str().unwrap();
                assert!(
                    text.contains(&format!("`{path}`")),
                    "{at}: the document does not name {path}"
                );
            }
            continue;
        }
        assert_eq!(resp.status, 201, "{at}: the example is refused: {}", resp.text);
        if let Kind::Pipeline(_) = kind {
            // The string form SageMaker's clients send is the same definition.
            let string_form = json!({"name": format!("{name}-string"), "definition": value.to_string()});
            let resp = app.post("/v1/pipelines", &string_form).await;
            assert_eq!(
                resp.status, 201,
                "{at}: the example as a string is refused: {}",
                resp.text
            );
        }
        let Kind::Pipeline(Some(expected)) = kind else { continue };
        let id = app.start(&name, json!({})).await;
        let execution = app.wait_terminal(&id).await;
        let steps = app.steps(&id).await;
        assert_eq!(
            execution["status"], expected,
            "{at}: the example's run: {execution}\nsteps: {steps:#?}"
        );
        if expected == "Failed" {
            let reason = execution["failure_reason"].as_str().unwrap();
            assert!(
                text.contains(&format!("`{reason}`")),
                "{at}: the document does not quote the failure reason {reason:?}"
            );
        }
        ran += 1;
    }
    assert!(ran >= 5, "examples run: {ran}");
}

/// The claims the reference makes in prose about its examples' runs.
#[sqlx::test]
async fn example_runs_do_what_the_text_says(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let by_first_step = |first: &str| {
        examples()
            .into_iter()
            .find(|(_, _, v)| v["Steps"][0]["Name"] == first)
            .unwrap_or_else(|| panic!("no example starts with step {first}"))
            .2
    };
    // Condition: the default takes IfSteps; the other branch is ConditionNotMet.
    app.create_pipeline("branches", by_first_step("IsLarge")).await;
    let id = app.start("branches", json!({})).await;
    app.wait_terminal(&id).await;
    let status = |steps: &[Value], name: &str| {
        let s = steps.iter().find(|s| s["step_name"] == name).unwrap();
        (
            s["status"].as_str().unwrap().to_string(),
            s["skip_reason"].as_str().map(String::from),
        )
    };
    let steps = app.steps(&id).await;
    assert_eq!(status(&steps, "Large"), ("Succeeded".into(), None));
    assert_eq!(status(&steps, "Done"), ("Succeeded".into(), None));
    for skipped in ["Small", "AfterSmall"] {
        assert_eq!(
            status(&steps, skipped),
            ("Skipped".into(), Some("ConditionNotMet".into())),
            "{skipped}"
        );
    }
    let done = steps.iter().find(|s| s["step_name"] == "Done").unwrap();
    assert_eq!(done["properties"]["Outputs"], json!({"large": true}));

    // Retry: the first attempt fails, the second succeeds.
    app.create_pipeline("flaky", by_first_step("Flaky")).await;
    let id = app.start("flaky", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let flaky = app.step(&id, "Flaky").await;
    assert_eq!(flaky["attempt_count"], 2, "{flaky}");

    // Std:JsonGet in both forms.
    app.create_pipeline("jsonget", by_first_step("Evaluate")).await;
    let id = app.start("jsonget", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let summary = app.step(&id, "Summary").await;
    assert_eq!(summary["properties"]["Outputs"]["first_label"], "cat", "{summary}");
    let report = summary["properties"]["Outputs"]["report"].as_str().unwrap();
    assert!(
        report.starts_with('/') && report.ends_with("/evaluation.json"),
        "{report}"
    );

    // The overview: the gate passes, Register collects the values.
    app.create_pipeline("overview", by_first_step("Prepare")).await;
    let id = app.start("overview", json!({})).await;
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let register = app.step(&id, "Register").await;
    let outputs = &register["properties"]["Outputs"];
    assert_eq!(outputs["accuracy"], 0.93, "{register}");
    assert_eq!(outputs["rows"], 10);
    assert_eq!(outputs["model"], format!("overview/{id}"));
    let log = app.get(&format!("/v1/executions/{id}/steps/Train/logs")).await;
    assert!(log.text.contains("fast mode, 3 epochs, 10 rows"), "{}", log.text);

    // The SDK-shaped Callback: the token and the queue in its metadata, the
    // reported value typed in OutputParameters.
    let review = examples()
        .into_iter()
        .find(|(_, _, v)| v["Name"] == "ManualReview")
        .expect("the SDK Callback example")
        .2;
    app.create_pipeline("review", definition_with(json!([]), json!([review])))
        .await;
    let id = app.start("review", json!({})).await;
    let step = app
        .wait_step(&id, "ManualReview", |s| s["metadata"]["callback"]["token"].is_string())
        .await;
    assert_eq!(
        step["metadata"]["callback"]["sqs_queue_url"], review["SqsQueueUrl"],
        "{step}"
    );
    let token = step["metadata"]["callback"]["token"].as_str().unwrap();
    let report = json!({"output_parameters": {"verdict": "approved"}});
    app.post(&format!("/v1/callbacks/{token}/success"), &report)
        .await
        .expect(200);
    assert_eq!(app.wait_terminal(&id).await["status"], "Succeeded");
    let step = app.step(&id, "ManualReview").await;
    assert_eq!(step["properties"]["OutputParameters"], json!({"verdict": "approved"}));
}
