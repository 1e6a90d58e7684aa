use serde_json::json;

use super::*;

fn doc(steps: Value) -> Value {
    json!({"Version": VERSION, "Parameters": [{"Name": "Epochs", "Type": "Integer", "DefaultValue": 10}], "Steps": steps})
}

fn issues(v: Value) -> Vec<Issue> {
    parse_definition(&v).expect_err("expected validation issues")
}

/// The single issue at `path`; its message must mention every `needle`.
fn assert_issue(v: Value, path: &str, needles: &[&str]) {
    let all = issues(v);
    let at: Vec<_> = all.iter().filter(|i| i.path == path).collect();
    assert_eq!(at.len(), 1, "expected one issue at {path}, got {all:#?}");
    for n in needles {
        assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
    }
}

fn cmd(name: &str) -> Value {
    json!({"Name": name, "Type": "Command", "Arguments": {"Command": ["true"]}})
}

fn spec_example() -> Value {
    json!({
      "Version": "2020-12-01",
      "Metadata": {},
      "Parameters": [
        {"Name": "Epochs", "Type": "Integer", "DefaultValue": 10},
        {"Name": "Mode", "Type": "String", "DefaultValue": "fast", "EnumValues": ["fast", "full"]},
        {"Name": "Threshold", "Type": "Float", "DefaultValue": 0.9}
      ],
      "Steps": [
        {"Name": "Prepare", "Type": "Command",
         "Arguments": {"Command": ["python3", "prep.py", "--mode", {"Get": "Parameters.Mode"}]},
         "CacheConfig": {"Enabled": true, "ExpireAfter": "P30D"}},
        {"Name": "Train", "Type": "Command",
         "Arguments": {
           "Command": ["python3", "train.py", "--data", {"Get": "Steps.Prepare.ArtifactsUri"}],
           "Env": {"EPOCHS": {"Get": "Parameters.Epochs"}},
           "TimeoutSeconds": 3600},
         "RetryPolicies": [{"ExceptionType": ["Command.FAILED"], "IntervalSeconds": 5, "BackoffRate": 2.0, "MaxAttempts": 3}]},
        {"Name": "Gate", "Type": "Condition",
         "Arguments": {
           "Conditions": [{"Type": "GreaterThanOrEqualTo",
                           "LeftValue": {"Get": "Steps.Train.Outputs.accuracy"},
                           "RightValue": {"Get": "Parameters.Threshold"}}],
           "IfSteps": [{"Name": "Publish", "Type": "Command", "Arguments": {"Command": ["./publish.sh"]}}],
           "ElseSteps": [{"Name": "Reject", "Type": "Fail",
                          "Arguments": {"ErrorMessage": {"Std:Join": {"On": " ", "Values": ["accuracy below", {"Get": "Parameters.Threshold"}]}}}}]}}
      ]
    })
}

fn sagemaker_example() -> Value {
    json!({
      "Version": "2020-12-01",
      "Metadata": {},
      "Parameters": [
        {"Name": "InputData", "Type": "String", "DefaultValue": "s3://b/k"},
        {"Name": "Threshold", "Type": "Float", "DefaultValue": 0.7}
      ],
      "PipelineExperimentConfig": {
        "ExperimentName": {"Get": "Execution.PipelineName"},
        "TrialName": {"Get": "Execution.PipelineExecutionId"}
      },
      "Steps": [
        {"Name": "Eval", "Type": "Command",
         "Arguments": {"Command": ["python3", "evaluate.py", "--input", {"Get": "Parameters.InputData"}]},
         "CacheConfig": {"Enabled": true, "ExpireAfter": "P30D"},
         "RetryPolicies": [{"ExceptionType": ["Step.SERVICE_FAULT", "Step.THROTTLING"], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 3}],
         "PropertyFiles": [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}]},
        {"Name": "CheckAccuracy", "Type": "Condition",
         "Arguments": {
           "Conditions": [{"Type": "GreaterThanOrEqualTo",
             "LeftValue": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.EvaluationReport"}, "Path": "metrics.accuracy.value"}},
             "RightValue": {"Get": "Parameters.Threshold"}}],
           "IfSteps": [{"Name": "Register", "Type": "Command", "Arguments": {"Shell": "echo register"}}],
           "ElseSteps": [{"Name": "Fail", "Type": "Fail",
             "Arguments": {"ErrorMessage": {"Std:Join": {"On": " ", "Values": ["accuracy below", {"Get": "Parameters.Threshold"}]}}}}]}}
      ]
    })
}

#[test]
fn accepts_the_spec_example() {
    let d = parse_definition(&spec_example()).unwrap();
    let names: Vec<_> = d.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Prepare", "Train", "Gate", "Publish", "Reject"]);
    assert_eq!(d.step("Train").unwrap().depends_on, ["Prepare"]);
    assert_eq!(d.step("Gate").unwrap().depends_on, ["Train"]);
    let publish = d.step("Publish").unwrap();
    assert_eq!(publish.depends_on, ["Gate"]);
    assert_eq!(
        publish.branch,
        Some(Branch {
            condition: "Gate".into(),
            if_branch: true
        })
    );
    assert_eq!(publish.pointer, "/Steps/2/Arguments/IfSteps/0");
    assert_eq!(
        d.step("Reject").unwrap().branch.as_ref().map(|b| b.if_branch),
        Some(false)
    );
    let gate = d.step("Gate").unwrap();
    assert_eq!(
        gate.arguments.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["Conditions"]
    );
    assert!(gate.raw["Arguments"].get("IfSteps").is_none());
    let prepare = d.step("Prepare").unwrap();
    assert!(prepare.caching_enabled());
    assert_eq!(prepare.cache.unwrap().expire_after.unwrap().days, 30);
    assert_eq!(d.step("Train").unwrap().retry_policies[0].max_attempts, Some(3));
    assert_eq!(d.dag.descendants("Prepare").len(), 4);
    assert_eq!(d.dag.topological_order()[0], "Prepare");
    assert_eq!(d.parameter("Mode").unwrap().enum_values.as_ref().unwrap().len(), 2);
    let eff = d
        .resolve_parameters(json!({"Epochs": "12"}).as_object().unwrap())
        .unwrap();
    assert_eq!(eff["Epochs"], json!(12));
    assert_eq!(eff["Threshold"], json!(0.9));
}

#[test]
fn accepts_a_sagemaker_sdk_definition_and_normalizes_json_get() {
    let d = parse_definition(&sagemaker_example()).unwrap();
    assert!(d.document.get("PipelineExperimentConfig").is_some());
    let eval = d.step("Eval").unwrap();
    assert_eq!(
        eval.property_files,
        [("EvaluationReport".to_string(), "evaluation.json".to_string())]
    );
    let check = d.step("CheckAccuracy").unwrap();
    assert_eq!(check.depends_on, ["Eval"]);
    assert_eq!(
        check.arguments["Conditions"][0]["LeftValue"],
        json!({"Std:JsonGet": {"Step": "Eval", "File": "evaluation.json", "Path": "metrics.accuracy.value"}})
    );
    // `raw` keeps the step as given.
    assert!(check.raw["Arguments"]["Conditions"][0]["LeftValue"]["Std:JsonGet"]
        .get("PropertyFile")
        .is_some());
    assert_eq!(d.step("Fail").unwrap().kind, StepKind::Fail);
    assert_eq!(d.step("Register").unwrap().depends_on, ["CheckAccuracy"]);
}

#[test]
fn accepts_the_string_form() {
    let text = serde_json::to_string(&spec_example()).unwrap();
    let d = parse_definition(&Value::String(text)).unwrap();
    assert_eq!(d.steps.len(), 5);
    assert!(d.document.is_object());
    let all = issues(Value::String("{\"Version\": ".into()));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].path, "");
    assert!(all[0].message.contains("not valid JSON"));
    assert_eq!(issues(json!(5))[0].path, "");
}

#[test]
fn duplicate_step_name() {
    assert_issue(
        doc(json!([cmd("A"), cmd("A")])),
        "/Steps/1/Name",
        &["duplicate step name A", "/Steps/0"],
    );
    // Branch steps share the name space.
    let v = doc(json!([cmd("A"), {"Name": "C", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}], "IfSteps": [cmd("A")]}}]));
    assert_issue(v, "/Steps/1/Arguments/IfSteps/0/Name", &["duplicate step name A"]);
}

#[test]
fn duplicate_parameter() {
    let v = json!({"Version": VERSION, "Parameters": [
        {"Name": "P", "Type": "String"}, {"Name": "P", "Type": "Integer"}], "Steps": [cmd("A")]});
    assert_issue(v, "/Parameters/1/Name", &["duplicate parameter name P"]);
}

#[test]
fn bad_parameter_declarations() {
    let v = json!({"Version": VERSION, "Parameters": [
        {"Name": "E", "Type": "Integer", "DefaultValue": "ten"},
        {"Name": "M", "Type": "String", "DefaultValue": "slow", "EnumValues": ["fast"]},
        {"Name": "N", "Type": "Integer", "EnumValues": ["1"]},
        {"Name": "T", "Type": "Date"},
        {"Name": "9x", "Type": "String", "Extra": 1}], "Steps": [cmd("A")]});
    let all = issues(v);
    let paths: Vec<_> = all.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/Parameters/0/DefaultValue",
            "/Parameters/1/DefaultValue",
            "/Parameters/2/EnumValues",
            "/Parameters/3/Type",
            "/Parameters/4/Extra",
            "/Parameters/4/Name"
        ]
    );
    assert!(all[0].message.contains("parameter E expects Integer, got \"ten\""));
    assert!(all[1].message.contains("\"slow\""));
    assert!(all[3].message.contains("\"Date\"") && all[3].message.contains("Boolean"));
}

#[test]
fn unknown_dependency() {
    let mut a = cmd("A");
    a["DependsOn"] = json!(["Nope"]);
    assert_issue(
        doc(json!([a])),
        "/Steps/0/DependsOn/0",
        &["unknown step \"Nope\"", "step A"],
    );
}

#[test]
fn cycle() {
    let mut a = cmd("A");
    a["DependsOn"] = json!(["B"]);
    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!(["x", {"Get": "Steps.A.Outputs.x"}]);
    assert_issue(doc(json!([a, b])), "/Steps/0", &["A -> B -> A"]);
    let mut c = cmd("C");
    c["DependsOn"] = json!(["C"]);
    assert_issue(doc(json!([c])), "/Steps/0/DependsOn/0", &["step C depends on itself"]);
}

#[test]
fn unknown_parameter_reference() {
    let mut a = cmd("A");
    a["Arguments"]["Command"] = json!(["x", {"Get": "Parameters.Epoch"}]);
    assert_issue(
        doc(json!([a])),
        "/Steps/0/Arguments/Command/1",
        &["unknown parameter \"Epoch\"", "step A"],
    );
}

#[test]
fn unknown_step_reference() {
    let mut a = cmd("A");
    a["Arguments"]["Env"] = json!({"X": {"Get": "Steps.Trian.Outputs.x"}});
    assert_issue(
        doc(json!([a])),
        "/Steps/0/Arguments/Env/X",
        &["unknown step \"Trian\"", "Steps.Trian.Outputs.x"],
    );
}

#[test]
fn unknown_property() {
    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!([{"Get": "Steps.A.Output.acc"}]);
    assert_issue(
        doc(json!([cmd("A"), b])),
        "/Steps/1/Arguments/Command/0",
        &["\"Output\"", "Steps.A.Output.acc", "Outputs, ExitCode, ArtifactsUri"],
    );
    let cb = json!({"Name": "Ask", "Type": "Callback", "Arguments": {"OutputParameters": [{"OutputName": "ok", "OutputType": "Boolean"}]}});
    let mut c = cmd("C");
    c["Arguments"]["Command"] =
        json!([{"Get": "Steps.Ask.OutputParameters.nope"}, {"Get": "Steps.Ask.OutputParameters.ok"}]);
    assert_issue(doc(json!([cb, c])), "/Steps/1/Arguments/Command/0", &["\"nope\"", "ok"]);
    let fail = json!({"Name": "F", "Type": "Fail"});
    let mut d = cmd("D");
    d["Arguments"]["Command"] = json!([{"Get": "Steps.F.Outputs"}]);
    assert_issue(
        doc(json!([fail, d])),
        "/Steps/1/Arguments/Command/0",
        &["Fail step F has no properties"],
    );
    let mut e = cmd("E");
    e["Arguments"]["Command"] = json!([{"Get": "Steps.A.ExitCode.x"}]);
    assert_issue(
        doc(json!([cmd("A"), e])),
        "/Steps/1/Arguments/Command/0",
        &["ExitCode", "no sub-path"],
    );
}

#[test]
fn self_reference() {
    let mut a = cmd("A");
    a["Arguments"]["Command"] = json!([{"Get": "Steps.A.Outputs.x"}]);
    assert_issue(
        doc(json!([a])),
        "/Steps/0/Arguments/Command/0",
        &["step A refers to itself"],
    );
}

#[test]
fn opposite_branch_reference() {
    let v = doc(json!([{"Name": "Gate", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "Equals", "LeftValue": {"Get": "Parameters.Epochs"}, "RightValue": 1}],
        "IfSteps": [{"Name": "Yes", "Type": "Pass", "Arguments": {"v": {"Get": "Steps.No.Outputs.v"}}}],
        "ElseSteps": [{"Name": "No", "Type": "Pass", "Arguments": {"v": 1}}]}}]));
    assert_issue(
        v,
        "/Steps/0/Arguments/IfSteps/0/Arguments/v",
        &[
            "step Yes",
            "step No",
            "Condition Gate",
            "not an ancestor that can run before it",
        ],
    );
    // Same branch is fine; so is a later top-level step reading a branch step.
    let v = doc(json!([{"Name": "Gate", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}],
        "IfSteps": [{"Name": "Y1", "Type": "Pass"}, {"Name": "Y2", "Type": "Pass", "DependsOn": ["Y1"]}]}},
        {"Name": "After", "Type": "Pass", "Arguments": {"v": {"Get": "Steps.Y2.Outputs"}}}]));
    let d = parse_definition(&v).unwrap();
    assert_eq!(d.step("Y2").unwrap().depends_on, ["Y1", "Gate"]);
    assert_eq!(d.step("After").unwrap().depends_on, ["Y2"]);
}

#[test]
fn unsupported_step_type_lists_supported() {
    let v = doc(json!([{"Name": "T", "Type": "Training", "Arguments": {}}]));
    assert_issue(
        v,
        "/Steps/0/Type",
        &[
            "\"Training\"",
            "Command, Pass, Condition, Fail, Callback, ForEach, Cleanup",
        ],
    );
}

#[test]
fn unsupported_step_type_is_one_issue_and_nothing_else() {
    // As the SDK writes a ProcessingStep: job arguments, PropertyFiles,
    // CacheConfig and SageMaker retry types; and a LambdaStep.
    let processing = json!({"Name": "bad name", "Type": "Processing",
        "Arguments": {"ProcessingResources": {"ClusterConfig": {"InstanceCount": 1}}, "AppSpecification": {"ImageUri": "x"}},
        "PropertyFiles": [{"PropertyFileName": "Report", "OutputName": "evaluation", "FilePath": "evaluation.json"}],
        "CacheConfig": {"Enabled": true, "ExpireAfter": "not a duration"},
        "RetryPolicies": [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "MaxAttempts": 99}],
        "DependsOn": ["Nowhere"]});
    let lambda = json!({"Name": "L", "Type": "Lambda", "DependsOn": [],
        "FunctionArn": "arn:aws:lambda:us-east-1:000000000000:function:f",
        "OutputParameters": [{"OutputName": "o", "OutputType": "String"}],
        "Arguments": {"x": {"Get": "Parameters.Nope"}}});
    let v = doc(json!([processing, lambda, cmd("After")]));
    let all = issues(v);
    let paths: Vec<_> = all.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["/Steps/0/Type", "/Steps/1/Type"], "{all:#?}");
    for (issue, t) in all.iter().zip(["\"Processing\"", "\"Lambda\""]) {
        assert!(issue.message.contains(t), "{}", issue.message);
        assert!(
            issue
                .message
                .contains("Command, Pass, Condition, Fail, Callback, ForEach, Cleanup"),
            "{}",
            issue.message
        );
        assert!(issue.message.contains("not run by stepwise"), "{}", issue.message);
    }
}

#[test]
fn sagemaker_top_level_keys_are_accepted_and_kept() {
    for mlflow in [
        json!(null),
        json!({"MlflowResourceArn": "arn:x", "MlflowExperimentName": "e"}),
    ] {
        let mut v = doc(json!([cmd("A")]));
        v["MlflowConfig"] = mlflow.clone();
        v["PipelineExperimentConfig"] = json!(null);
        v["Metadata"] = json!({});
        let d = parse_definition(&v).unwrap();
        assert_eq!(d.document["MlflowConfig"], mlflow);
        assert!(d.document.as_object().unwrap().contains_key("PipelineExperimentConfig"));
    }
    let mut v = doc(json!([cmd("A")]));
    v["MlflowConfig"] = json!("yes");
    assert_issue(v, "/MlflowConfig", &["MlflowConfig must be an object"]);
}

#[test]
fn sdk_callback_shape_becomes_a_stepwise_callback() {
    let cb = json!({"Name": "Approve", "Type": "Callback", "DependsOn": ["A"],
        "Arguments": {"model": {"Get": "Steps.A.Outputs.model"}, "Url": "not-a-url", "note": "free-form"},
        "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/000000000000/q",
        "OutputParameters": [{"OutputName": "approved", "OutputType": "Boolean"}],
        "CacheConfig": {"Enabled": true, "ExpireAfter": "PT1H"}});
    let mut after = cmd("After");
    after["Arguments"]["Command"] = json!(["echo", {"Get": "Steps.Approve.OutputParameters['approved']"}]);
    let d = parse_definition(&doc(json!([cmd("A"), cb, after]))).unwrap();
    let step = d.step("Approve").unwrap();
    assert_eq!(step.kind, StepKind::Callback);
    assert!(!step.caching_enabled());
    assert_eq!(step.depends_on, ["A"]);
    let args = CallbackArgs::from_resolved(&step.arguments).unwrap();
    assert_eq!(args.url, None);
    assert_eq!(
        args.output_parameters,
        [("approved".to_string(), params::ParamType::Boolean)]
    );
    assert_eq!(
        args.sqs_queue_url.as_deref(),
        Some("https://sqs.us-east-1.amazonaws.com/000000000000/q")
    );
    assert_eq!(step.arguments["Inputs"]["note"], "free-form");
    assert_eq!(d.step("After").unwrap().depends_on, ["Approve"]);
    assert_eq!(
        d.document["Steps"][1]["SqsQueueUrl"],
        "https://sqs.us-east-1.amazonaws.com/000000000000/q"
    );

    // Bad shapes are still issues, and an undeclared output is refused.
    let cb = json!({"Name": "Approve", "Type": "Callback", "SqsQueueUrl": 5,
        "OutputParameters": [{"OutputName": "a", "OutputType": "Date"}]});
    let all = issues(doc(json!([cb])));
    let paths: Vec<_> = all.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/Steps/0/SqsQueueUrl", "/Steps/0/OutputParameters/0/OutputType"],
        "{all:#?}"
    );
    // SqsQueueUrl and OutputParameters belong to Callback steps only.
    let mut c = cmd("C");
    c["SqsQueueUrl"] = json!("q");
    assert_issue(
        doc(json!([c])),
        "/Steps/0/SqsQueueUrl",
        &["unknown key", "Callback only"],
    );
}

#[test]
fn sdk_callback_inputs_read_a_property_file() {
    let mut a = cmd("A");
    a["PropertyFiles"] = json!([{"PropertyFileName": "R", "FilePath": "r.json"}]);
    let cb = json!({"Name": "Ask", "Type": "Callback", "SqsQueueUrl": "q", "OutputParameters": [],
        "Arguments": {"acc": {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.A.PropertyFiles.R"}, "Path": "acc"}}}});
    let d = parse_definition(&doc(json!([a, cb]))).unwrap();
    assert_eq!(
        d.step("Ask").unwrap().arguments["Inputs"]["acc"],
        json!({"Std:JsonGet": {"Step": "A", "File": "r.json", "Path": "acc"}})
    );
}

#[test]
fn json_get_with_s3_uri_is_one_issue() {
    let mut v = doc(json!([{"Name": "Gate", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "GreaterThanOrEqualTo",
            "LeftValue": {"Std:JsonGet": {"S3Uri": {"Std:Join": {"On": "/", "Values": ["s3://b", "m.json"]}}, "Path": "acc"}},
            "RightValue": 0.5}],
        "IfSteps": [], "ElseSteps": []}}]));
    v["Parameters"] = json!([]);
    let all = issues(v);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        all[0].path,
        "/Steps/0/Arguments/Conditions/0/LeftValue/Std:JsonGet/S3Uri"
    );
    assert!(all[0].message.contains("not supported"));
}

#[test]
fn bad_duration() {
    let mut a = cmd("A");
    a["CacheConfig"] = json!({"Enabled": true, "ExpireAfter": "P30X"});
    assert_issue(
        doc(json!([a])),
        "/Steps/0/CacheConfig/ExpireAfter",
        &["\"P30X\"", "step A"],
    );
}

#[test]
fn bad_retry_bounds() {
    let mut a = cmd("A");
    a["RetryPolicies"] = json!([
        {"ExceptionType": ["Command.FAILED"], "MaxAttempts": 21},
        {"ExceptionType": ["Command.FAILED"], "MaxAttempts": 2, "ExpireAfterMin": 3}
    ]);
    let v = doc(json!([a]));
    assert_issue(
        v.clone(),
        "/Steps/0/RetryPolicies/0/MaxAttempts",
        &["MaxAttempts", "21"],
    );
    assert_issue(v, "/Steps/0/RetryPolicies/1", &["MaxAttempts or ExpireAfterMin"]);
}

#[test]
fn unknown_keys_at_each_level() {
    let mut v = doc(json!([cmd("A")]));
    v["Triggers"] = json!([]);
    assert_issue(v, "/Triggers", &["\"Triggers\"", "top-level"]);
    let mut a = cmd("A");
    a["Retries"] = json!(3);
    assert_issue(doc(json!([a])), "/Steps/0/Retries", &["\"Retries\"", "step A"]);
    let mut a = cmd("A");
    a["Arguments"]["Image"] = json!("x");
    assert_issue(doc(json!([a])), "/Steps/0/Arguments/Image", &["\"Image\"", "step A"]);
    let p = json!({"Name": "P", "Type": "Pass", "PropertyFiles": []});
    assert_issue(
        doc(json!([p])),
        "/Steps/0/PropertyFiles",
        &["only allowed on Command", "step P"],
    );
}

#[test]
fn bad_version_and_empty_steps() {
    let v = json!({"Version": "2019-01-01", "Steps": [cmd("A")]});
    assert_issue(v, "/Version", &["\"2019-01-01\"", "2020-12-01"]);
    assert_issue(json!({"Steps": [cmd("A")]}), "/Version", &["required"]);
    assert_issue(json!({"Version": VERSION, "Steps": []}), "/Steps", &["at least one"]);
    assert_issue(json!({"Version": VERSION}), "/Steps", &["required"]);
}

#[test]
fn malformed_path() {
    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!([{"Get": "Steps.A.Outputs[acc]"}]);
    assert_issue(
        doc(json!([cmd("A"), b])),
        "/Steps/1/Arguments/Command/0",
        &["Steps.A.Outputs[acc]", "character 17"],
    );
}

#[test]
fn malformed_std_join() {
    let f = json!({"Name": "F", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {"Values": "x"}}}});
    let v = doc(json!([f]));
    assert_issue(v.clone(), "/Steps/0/Arguments/ErrorMessage/Std:Join/On", &["On"]);
    assert_issue(
        v,
        "/Steps/0/Arguments/ErrorMessage/Std:Join/Values",
        &["Values", "list"],
    );
}

#[test]
fn caching_on_a_condition() {
    let c = json!({"Name": "C", "Type": "Condition", "CacheConfig": {"Enabled": true},
        "Arguments": {"Conditions": [{"Type": "Equals", "LeftValue": 1, "RightValue": 1}]}});
    assert_issue(
        doc(json!([c])),
        "/Steps/0/CacheConfig/Enabled",
        &["step C", "Condition steps are never cached"],
    );
}

/// A timeout the database cannot hold as a deadline is refused when the
/// pipeline is created, not after three attempts at run time.
#[test]
fn timeouts_past_what_a_deadline_can_hold_are_refused_at_create_time() {
    let cb = json!({"Name": "Ask", "Type": "Callback", "Arguments": {"TimeoutSeconds": 1_000_000_000_000_000_000_u64}});
    assert_issue(
        doc(json!([cb])),
        "/Steps/0/Arguments/TimeoutSeconds",
        &["from 1 to 315360000", "1000000000000000000"],
    );
    let a = json!({"Name": "A", "Type": "Command", "Arguments": {"Command": ["x"], "TimeoutSeconds": 315_360_001}});
    assert_issue(doc(json!([a])), "/Steps/0/Arguments/TimeoutSeconds", &["ten years"]);
    let ok = json!({"Name": "A", "Type": "Command", "Arguments": {"Command": ["x"], "TimeoutSeconds": 315_360_000}});
    parse_definition(&doc(json!([ok]))).expect("ten years is accepted");
    assert!(args::CommandArgs::from_resolved(&json!({"Shell": "x", "TimeoutSeconds": "315360001"})).is_err());
}

#[test]
fn command_argument_shapes() {
    let a = json!({"Name": "A", "Type": "Command", "Arguments": {"Command": ["x"], "Shell": "y"}});
    assert_issue(doc(json!([a])), "/Steps/0/Arguments", &["not both", "step A"]);
    let a = json!({"Name": "A", "Type": "Command", "Arguments": {"Env": {}}});
    assert_issue(doc(json!([a])), "/Steps/0/Arguments", &["needs Command"]);
    let a = json!({"Name": "A", "Type": "Command", "Arguments": {"Command": ["x", {"a": 1}], "TimeoutSeconds": 0, "Env": {"K": [1]}}});
    let all = issues(doc(json!([a])));
    let paths: Vec<_> = all.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/Steps/0/Arguments/Command/1",
            "/Steps/0/Arguments/TimeoutSeconds",
            "/Steps/0/Arguments/Env/K"
        ]
    );
    assert_issue(
        doc(json!([{"Name": "A", "Type": "Command"}])),
        "/Steps/0/Arguments",
        &["needs Arguments"],
    );
}

#[test]
fn callback_and_json_get_checks() {
    let cb = json!({"Name": "Ask", "Type": "Callback", "Arguments": {"Url": "ftp://x",
        "OutputParameters": [{"OutputName": "a"}, {"OutputName": "a", "OutputType": "Date"}]}});
    let all = issues(doc(json!([cb])));
    let paths: Vec<_> = all.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/Steps/0/Arguments/Url",
            "/Steps/0/Arguments/OutputParameters/1/OutputName",
            "/Steps/0/Arguments/OutputParameters/1/OutputType"
        ]
    );
    let mut b = cmd("B");
    b["Arguments"]["Command"] =
        json!([{"Std:JsonGet": {"PropertyFile": {"Get": "Steps.A.PropertyFiles.Nope"}, "Path": "x"}}]);
    assert_issue(doc(json!([cmd("A"), b])), "/Steps/1/Arguments/Command/0", &["\"Nope\""]);
    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!([{"Std:JsonGet": {"Step": "P", "File": "m.json", "Path": "x"}}]);
    assert_issue(
        doc(json!([{"Name": "P", "Type": "Pass"}, b])),
        "/Steps/1/Arguments/Command/0",
        &["only Command steps", "P is a Pass"],
    );
    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!([{"Std:JsonGet": {"Step": "A", "File": "../m.json", "Path": "x"}}]);
    let d = issues(doc(json!([cmd("A"), b])));
    assert!(d[0].message.contains("../m.json"));
}

#[test]
fn collects_many_issues_at_once() {
    let v = json!({"Version": "1", "Extra": 1, "Steps": [
        {"Name": "bad name", "Type": "Processing"},
        {"Name": "B", "Type": "Command", "Arguments": {"Command": [{"Get": "Parameters.Nope"}]}, "DependsOn": ["Z"]}
    ]});
    let all = issues(v);
    assert!(all.len() >= 5, "{all:#?}");
}

#[test]
fn ten_thousand_step_chain_and_fan_out() {
    let n = 10_000;
    let chain: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({"Name": format!("s{i}"), "Type": "Pass", "Arguments": {"i": i}});
            if i > 0 {
                s["Arguments"]["prev"] = json!({"Get": format!("Steps.s{}.Outputs.i", i - 1)});
            }
            s
        })
        .collect();
    let start = std::time::Instant::now();
    let d = parse_definition(&doc(Value::Array(chain))).unwrap();
    let chain_time = start.elapsed();
    assert_eq!(d.steps.len(), n);
    assert_eq!(d.step("s9999").unwrap().depends_on, ["s9998"]);

    let mut fan = vec![json!({"Name": "root", "Type": "Pass"})];
    fan.extend((0..n).map(|i| json!({"Name": format!("f{i}"), "Type": "Pass", "DependsOn": ["root"]})));
    fan.push(json!({"Name": "join", "Type": "Pass", "DependsOn": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()}));
    let start = std::time::Instant::now();
    let d = parse_definition(&doc(Value::Array(fan))).unwrap();
    let fan_time = start.elapsed();
    assert_eq!(d.dag.children("root").len(), n);
    assert_eq!(d.dag.parents("join").len(), n);
    // Generous for debug builds; release is far faster.
    assert!(
        chain_time.as_secs() < 5 && fan_time.as_secs() < 5,
        "{chain_time:?} {fan_time:?}"
    );
}

#[test]
fn secrets_only_as_a_command_env_value() {
    let mut a = cmd("A");
    a["Arguments"]["Env"] = json!({"TOKEN": {"Get": "Secrets.API_TOKEN"}});
    let def = parse_definition(&doc(json!([a]))).expect("a secret in a Command's Env is valid");
    assert_eq!(def.secret_names(), ["API_TOKEN"]);

    let mut b = cmd("B");
    b["Arguments"]["Command"] = json!(["echo", {"Get": "Secrets.API_TOKEN"}]);
    assert_issue(
        doc(json!([b])),
        "/Steps/0/Arguments/Command/1",
        &["secret \"API_TOKEN\"", "step B", "Arguments.Env"],
    );
    let mut c = cmd("C");
    c["Arguments"]["Env"] = json!({"T": {"Std:Join": {"On": "", "Values": ["x", {"Get": "Secrets.S"}]}}});
    assert_issue(
        doc(json!([c])),
        "/Steps/0/Arguments/Env/T/Std:Join/Values/1",
        &["secret \"S\""],
    );
    let pass = json!({"Name": "P", "Type": "Pass", "Arguments": {"Env": {"T": {"Get": "Secrets.S"}}}});
    assert_issue(
        doc(json!([pass])),
        "/Steps/0/Arguments/Env/T",
        &["secret \"S\"", "Command"],
    );
    let callback = json!({"Name": "K", "Type": "Callback", "Arguments": {"Url": {"Get": "Secrets.S"}}});
    assert_issue(doc(json!([callback])), "/Steps/0/Arguments/Url", &["secret \"S\""]);
    let mut d = cmd("D");
    d["Arguments"]["Env"] = json!({"T": {"Get": "Secrets.bad-name"}});
    assert_issue(
        doc(json!([d])),
        "/Steps/0/Arguments/Env/T",
        &["Secrets.bad-name", "'-'"],
    );
}
