use super::*;
use serde_json::json;
use PathSegment::{Index, Key};

fn key(k: &str) -> PathSegment {
    Key(k.into())
}

#[test]
fn parse_get_forms() {
    assert_eq!(
        parse_get("Parameters.Epochs"),
        Ok(Reference::Parameter("Epochs".into()))
    );
    assert_eq!(
        parse_get("Execution.PipelineExecutionId"),
        Ok(Reference::Execution(ExecutionVar::PipelineExecutionId))
    );
    assert_eq!(
        parse_get("Steps.Train.Outputs['metrics'].acc[0]"),
        Ok(Reference::Step {
            step: "Train".into(),
            path: vec![key("Outputs"), key("metrics"), key("acc"), Index(0)]
        })
    );
    assert_eq!(
        parse_get(r#"Steps.T-1.Outputs["a.b"][12]"#),
        Ok(Reference::Step {
            step: "T-1".into(),
            path: vec![key("Outputs"), key("a.b"), Index(12)]
        })
    );
    assert_eq!(
        parse_get("Steps.S"),
        Ok(Reference::Step {
            step: "S".into(),
            path: vec![]
        })
    );
    let r = parse_get("Steps.Train.Outputs['a b'][3].x").unwrap();
    assert_eq!(r.to_string(), r#"Steps.Train.Outputs["a b"][3].x"#);
}

#[test]
fn secrets_are_a_reference_namespace() {
    assert_eq!(
        parse_get("Secrets.API_TOKEN"),
        Ok(Reference::Secret("API_TOKEN".into()))
    );
    assert_eq!(Reference::Secret("A".into()).to_string(), "Secrets.A");
    assert!(parse_get("Secrets.a.b").unwrap_err().contains("\"Secrets.a.b\""));
    assert!(parse_get("Secrets.").is_err());
    assert_eq!(
        evaluate(&json!({"Env": {"T": {"Get": "Secrets.T"}}}), &Fake).unwrap(),
        json!({"Env": {"T": {"Secret": "T"}}})
    );
}

#[test]
fn parse_get_errors_say_where() {
    let e = parse_get("Steps.Train.Outputs..acc").unwrap_err();
    assert!(
        e.contains("\"Steps.Train.Outputs..acc\"") && e.contains("character 21"),
        "{e}"
    );
    let e = parse_get("Steps.Train.Outputs[x]").unwrap_err();
    assert!(e.contains("character 21") && e.contains("inside [ ]"), "{e}");
    assert!(parse_get("Steps.Train.Outputs[0").unwrap_err().contains("expected ']'"));
    assert!(parse_get("Steps.Train.Outputs['a]")
        .unwrap_err()
        .contains("unterminated"));
    assert!(parse_get("Steps.Train.Outputs['a'x")
        .unwrap_err()
        .contains("expected ']'"));
    assert!(parse_get("Steps.Train.Outputs]").unwrap_err().contains("found ']'"));
    assert!(parse_get("Steps..x").unwrap_err().contains("missing step name"));
    assert!(parse_get("Parameters.A.b").unwrap_err().contains("no path"));
    assert!(parse_get("Execution.Nope").unwrap_err().contains("\"Nope\""));
    assert!(parse_get("Properties.X").unwrap_err().contains("\"Properties.X\""));
    assert!(parse_get("Steps").is_err());
    assert_eq!(parse_json_path("metrics.accuracy.value").unwrap().len(), 3);
    assert_eq!(parse_json_path("a.b[0]").unwrap(), vec![key("a"), key("b"), Index(0)]);
    assert_eq!(parse_json_path("[1]").unwrap(), vec![Index(1)]);
    assert!(parse_json_path("").is_err());
    assert!(parse_json_path(".a").is_err());
}

#[test]
fn is_expression_needs_exactly_one_known_key() {
    assert!(is_expression(&json!({"Get": "Parameters.A"})));
    assert!(is_expression(&json!({"Std:Join": {}})));
    assert!(!is_expression(&json!({"Get": "x", "Other": 1})));
    assert!(!is_expression(&json!({"get": "x"})));
    assert!(!is_expression(&json!("Get")));
}

#[test]
fn find_references_walks_everything() {
    let v = json!({
        "Command": ["a", {"Get": "Parameters.P"}, {"Std:Join": {"On": ",", "Values": [{"Get": "Steps.A.Outputs.x"}, 1]}}],
        "Env": {"X": {"Std:JsonGet": {"Step": "B", "File": "m.json", "Path": "a[0]"}}},
        "Y": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.C.PropertyFiles.Report"}, "Path": "acc"}}
    });
    let mut issues = Vec::new();
    let found = find_references(&v, "/Steps/0/Arguments", &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    let pointers: Vec<_> = found.iter().map(Found::pointer).collect();
    assert_eq!(
        pointers,
        [
            "/Steps/0/Arguments/Command/1",
            "/Steps/0/Arguments/Command/2/Std:Join/Values/0",
            "/Steps/0/Arguments/Env/X",
            "/Steps/0/Arguments/Y"
        ]
    );
    let steps: Vec<_> = found.iter().filter_map(Found::step).collect();
    assert_eq!(steps, ["A", "B", "C"]);
    assert_eq!(
        found[3],
        Found::PropertyFileGet {
            pointer: "/Steps/0/Arguments/Y".into(),
            step: "C".into(),
            property_file: "Report".into(),
            path: vec![key("acc")]
        }
    );
}

#[test]
fn malformed_expressions_are_issues() {
    let v = json!([
        {"Std:Join": {"On": 1, "Values": "x", "Extra": true}},
        {"Get": 5},
        {"Get": "Steps.A.Outputs[x]"},
        {"Std:JsonGet": {"Step": "A", "Path": "a..b"}},
        {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.A.Outputs.x"}, "Path": "a"}}
    ]);
    let mut issues = Vec::new();
    let found = find_references(&v, "/X", &mut issues);
    assert!(found.is_empty());
    let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/X/0/Std:Join/Extra",
            "/X/0/Std:Join/On",
            "/X/0/Std:Join/Values",
            "/X/1",
            "/X/2",
            "/X/3/Std:JsonGet/Path",
            "/X/3/Std:JsonGet/File",
            "/X/4/Std:JsonGet/PropertyFile",
        ]
    );
    assert!(issues[0].message.contains("\"Extra\""));
    assert!(issues[1].message.contains("On"));
    assert!(issues[4].message.contains("Steps.A.Outputs[x]"));
}

struct Fake;
impl Resolver for Fake {
    fn parameter(&self, name: &str) -> Option<Value> {
        (name == "Threshold").then(|| json!(0.5))
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        json!(format!("<{}>", var.as_str()))
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        (step == "Train").then(|| json!({"Outputs": {"metrics": {"acc": [0.9, 0.8]}, "ok": true}, "ExitCode": 0}))
    }
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        if step == "Train" && file == "m.json" {
            Ok(json!({"a": {"b": [1, 2]}}))
        } else {
            Err(format!("no file {file}"))
        }
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        Ok(json!({"Secret": name}))
    }
}

#[test]
fn evaluate_substitutes_everything() {
    let v = json!({
        "a": {"Get": "Steps.Train.Outputs['metrics'].acc[1]"},
        "b": [{"Get": "Parameters.Threshold"}, "lit", 3],
        "c": {"Std:Join": {"On": " ", "Values": ["acc", {"Get": "Steps.Train.Outputs.metrics.acc[0]"}, true, {"Get": "Steps.Train.Outputs.ok"}, {"Get": "Execution.PipelineName"}]}},
        "d": {"Std:JsonGet": {"Step": "Train", "File": "m.json", "Path": "a.b[1]"}},
        "e": {"Get": "Steps.Train.ExitCode"}
    });
    let got = evaluate(&v, &Fake).unwrap();
    assert_eq!(
        got,
        json!({"a": 0.8, "b": [0.5, "lit", 3], "c": "acc 0.9 true true <PipelineName>", "d": 2, "e": 0})
    );
}

#[test]
fn evaluate_errors_name_the_reference() {
    let e = evaluate(&json!({"Get": "Steps.Train.Outputs.accuracy"}), &Fake).unwrap_err();
    assert_eq!(e, r#"Steps.Train.Outputs.accuracy: key "accuracy" not found"#);
    let e = evaluate(&json!({"Get": "Steps.Train.Outputs.metrics.acc[5]"}), &Fake).unwrap_err();
    assert!(e.contains("index 5 out of range (length 2)"), "{e}");
    let e = evaluate(&json!({"Get": "Steps.Train.ExitCode.x"}), &Fake).unwrap_err();
    assert!(e.contains("cannot read key \"x\" of a Integer"), "{e}");
    let e = evaluate(&json!([{"Get": "Steps.Other.Outputs"}]), &Fake).unwrap_err();
    assert!(e.contains("Other"), "{e}");
    let e = evaluate(
        &json!({"Std:JsonGet": {"Step": "Train", "File": "x.json", "Path": "a"}}),
        &Fake,
    )
    .unwrap_err();
    assert!(e.contains("x.json") && e.contains("Train"), "{e}");
    let e = evaluate(
        &json!({"Std:JsonGet": {"Step": "Train", "File": "m.json", "Path": "a.c"}}),
        &Fake,
    )
    .unwrap_err();
    assert!(e.contains("a.c") && e.contains("\"c\" not found"), "{e}");
    assert!(evaluate(&json!({"Get": "Parameters.Nope"}), &Fake)
        .unwrap_err()
        .contains("Nope"));
}

#[test]
fn per_execution_values_are_listed() {
    let v = json!({"Env": {"A": {"Get": "Execution.PipelineExecutionId"}, "B": {"Get": "Execution.PipelineName"}},
                   "C": [{"Std:Join": {"On": "", "Values": [{"Get": "Execution.CurrentDateTime"}, {"Get": "Execution.PipelineExecutionId"}]}}]});
    // serde_json maps are sorted, so "C" is walked before "Env".
    assert_eq!(
        uses_per_execution_value(&v),
        ["Execution.CurrentDateTime", "Execution.PipelineExecutionId"]
    );
}

#[test]
fn json_get_with_s3_uri_is_one_clear_issue() {
    // As the SageMaker SDK writes JsonGet(s3_uri=Join(...), json_path=...).
    let v = json!({"Std:JsonGet": {
        "S3Uri": {"Std:Join": {"On": "/", "Values": ["s3://bucket", {"Get": "Execution.PipelineExecutionId"}, "m.json"]}},
        "Path": "metrics.accuracy"
    }});
    let mut issues = Vec::new();
    let found = find_references(&v, "/X", &mut issues);
    assert!(found.is_empty());
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].path, "/X/Std:JsonGet/S3Uri");
    assert!(issues[0].message.contains("S3Uri") && issues[0].message.contains("not supported"));
}
