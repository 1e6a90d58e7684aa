//! Fan-in (issue 20 item 12): a step after a ForEach reads the whole
//! `IterationOutputs` list, besides the SageMaker SDK's indexed form, in a
//! Pass step's arguments, a Command's `Env` (as JSON text) and a
//! Condition's operand: the map-then-reduce pipeline without knowing the
//! item count.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{definition_with, TestApp};

/// Map: `F` squares each item of the `Items` parameter (a Pass body step
/// `Sq`). Reduce: `Collect` (Pass), `Sum` (Command reading the list from
/// `Env`) and `Gate` (Condition comparing the list with the one expected
/// for the default items).
fn map_reduce() -> Value {
    let whole = json!({"Get": "Steps.F.IterationOutputs"});
    let expected: Vec<Value> = [1, 2, 3]
        .iter()
        .map(|n| json!({"Sq": {"Outputs": {"item": n, "index": n - 1}}}))
        .collect();
    definition_with(
        json!([{"Name": "Items", "Type": "String", "DefaultValue": "[1, 2, 3]"}]),
        json!([
            {"Name": "F", "Type": "ForEach",
             "Arguments": {
                 "IterableItems": {"Get": "Parameters.Items"},
                 "MaxConcurrency": 3,
                 "ForEachBody": [
                     {"Name": "Sq", "Type": "Pass",
                      "Arguments": {"item": {"Get": "ForEach.CurrentItem"},
                                    "index": {"Get": "ForEach.CurrentIndex"}}}
                 ]}},
            {"Name": "Collect", "Type": "Pass",
             "Arguments": {"all": whole, "first": {"Get": "Steps.F.IterationOutputs[0].Sq.Outputs.item"}}},
            {"Name": "Sum", "Type": "Command",
             "Arguments": {"Shell": "printf '{\"all\": %s}' \"$ALL\" > $STEPWISE_OUTPUTS",
                           "Env": {"ALL": whole}}},
            {"Name": "Gate", "Type": "Condition",
             "Arguments": {
                 "Conditions": [{"Type": "Equals", "LeftValue": whole, "RightValue": expected}],
                 "IfSteps": [{"Name": "Same", "Type": "Pass", "Arguments": {}}],
                 "ElseSteps": [{"Name": "Other", "Type": "Pass", "Arguments": {}}]}}
        ]),
    )
}

/// The whole list: one entry per item in item order, each the iteration's
/// body steps' property documents by body step name.
fn whole_list(items: &[i64]) -> Value {
    json!(items
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"Sq": {"Outputs": {"item": n, "index": i}}}))
        .collect::<Vec<_>>())
}

#[sqlx::test]
async fn a_reduce_step_reads_the_whole_iteration_outputs(db: PgPool) {
    let app = TestApp::spawn(db).await;
    // Validation at create time accepts the whole list wherever a value goes.
    app.create_pipeline("mr", map_reduce()).await;
    let plan = app.post("/v1/pipelines/mr/executions/plan", &json!({})).await;
    assert_eq!(plan.expect(200)["errors"], json!([]), "{}", plan.text);

    let id = app.start("mr", json!({})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let collect = app.step(&id, "Collect").await;
    assert_eq!(
        collect["properties"]["Outputs"]["all"],
        whole_list(&[1, 2, 3]),
        "{collect}"
    );
    assert_eq!(collect["properties"]["Outputs"]["first"], 1);
    let sum = app.step(&id, "Sum").await;
    assert_eq!(sum["status"], "Succeeded", "{sum}");
    assert_eq!(sum["properties"]["Outputs"]["all"], whole_list(&[1, 2, 3]), "{sum}");
    assert_eq!(app.step(&id, "Gate").await["properties"]["Outcome"], true);
    assert_eq!(app.step(&id, "Same").await["status"], "Succeeded");
    assert_eq!(app.step(&id, "Other").await["skip_reason"], "ConditionNotMet");

    // Another item count: the reduce steps see every item, and the
    // Condition compares the whole list (now unequal).
    let id = app.start("mr", json!({"parameters": {"Items": "[5, 6, 7, 8]"}})).await;
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let collect = app.step(&id, "Collect").await;
    assert_eq!(collect["properties"]["Outputs"]["all"], whole_list(&[5, 6, 7, 8]));
    let sum = app.step(&id, "Sum").await;
    assert_eq!(sum["properties"]["Outputs"]["all"], whole_list(&[5, 6, 7, 8]), "{sum}");
    assert_eq!(app.step(&id, "Gate").await["properties"]["Outcome"], false);
    assert_eq!(app.step(&id, "Other").await["status"], "Succeeded");
    app.stop().await;
}

/// A read into the list still names an iteration's body step; a path that
/// names no property of the ForEach is still refused.
#[sqlx::test]
async fn a_read_of_iteration_outputs_is_still_checked_at_create_time(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let mut definition = map_reduce();
    for (get, wrong) in [
        (
            "Steps.F.IterationOutputs[0].Nope.Outputs",
            "Nope is not a step of the body of ForEach F",
        ),
        ("Steps.F.IterationOutputs.Sq", "IterationOutputs of ForEach F is"),
        ("Steps.F.IterationOutput", "ForEach step F has these properties"),
    ] {
        definition["Steps"][1]["Arguments"]["all"] = json!({"Get": get});
        let resp = app
            .post("/v1/pipelines", &json!({"name": "bad", "definition": definition}))
            .await;
        let message = resp.expect_error(400, "ValidationError");
        let details = resp.body["error"]["details"].to_string();
        assert!(
            message.contains(wrong) || details.contains(wrong),
            "{get}: {}",
            resp.text
        );
    }
    app.stop().await;
}
