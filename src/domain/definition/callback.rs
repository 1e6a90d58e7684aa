//! Callback step arguments, in stepwise's shape (`Arguments` with
//! `OutputParameters`, `Url`, `TimeoutSeconds`) and in the SageMaker SDK's
//! (`SqsQueueUrl` and `OutputParameters` on the step, free-form `Arguments`).

use serde_json::{Map, Value};

use super::steps::{check_positive_int, unknown_keys};
use crate::domain::expr::{self, Found};
use crate::domain::{pointer_push, type_name, Issue};

pub(super) fn check_callback(obj: &Map<String, Value>, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Vec<String> {
    unknown_keys(obj, &["OutputParameters", "Url", "TimeoutSeconds"], ptr, label, issues);
    check_positive_int(obj, "TimeoutSeconds", ptr, label, issues);
    match obj.get("Url") {
        None => {}
        Some(Value::String(u)) => {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                issues.push(Issue::new(
                    pointer_push(ptr, "Url"),
                    format!("Url of step {label} must be an http or https URL, got {u:?}"),
                ));
            }
        }
        Some(v) if expr::is_expression(v) => {}
        Some(v) => issues.push(Issue::new(
            pointer_push(ptr, "Url"),
            format!("Url of step {label} must be a string, got {}", type_name(v)),
        )),
    }
    check_output_parameters(
        obj.get("OutputParameters"),
        &pointer_push(ptr, "OutputParameters"),
        label,
        issues,
    )
}

/// Whether a Callback step is in the SageMaker SDK's shape: `SqsQueueUrl`
/// and `OutputParameters` on the step, `Arguments` free-form (the inputs the
/// SDK sends with the token).
pub(super) fn is_sdk_callback(obj: &Map<String, Value>) -> bool {
    obj.contains_key("SqsQueueUrl") || obj.contains_key("OutputParameters")
}

/// Rewrites the SDK's Callback shape to stepwise's (the new `Arguments`,
/// the references in the inputs, the declared outputs): `Arguments` becomes
/// `{"OutputParameters": [..], "SqsQueueUrl": "..", "Inputs": {..free-form..}}`.
/// No Url: the token is delivered as for any Callback without a webhook (the
/// step's `metadata.callback`), and the queue URL is shown next to it.
pub(super) fn parse_sdk_callback(
    obj: &Map<String, Value>,
    step_ptr: &str,
    label: &str,
    issues: &mut Vec<Issue>,
) -> (Value, Vec<Found>, Vec<String>) {
    let args_ptr = pointer_push(step_ptr, "Arguments");
    let inputs = match obj.get("Arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            issues.push(Issue::new(
                &args_ptr,
                format!("Arguments of step {label} must be an object, got {}", type_name(other)),
            ));
            Value::Object(Map::new())
        }
    };
    let queue = match obj.get("SqsQueueUrl") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::String(_)) => v.clone(),
        Some(other) => {
            issues.push(Issue::new(
                pointer_push(step_ptr, "SqsQueueUrl"),
                format!("SqsQueueUrl of step {label} must be a string, got {}", type_name(other)),
            ));
            Value::Null
        }
    };
    let callback_outputs = check_output_parameters(
        obj.get("OutputParameters"),
        &pointer_push(step_ptr, "OutputParameters"),
        label,
        issues,
    );
    let refs = expr::find_references(&inputs, &args_ptr, issues);
    let mut arguments = Map::new();
    arguments.insert(
        "OutputParameters".into(),
        obj.get("OutputParameters").cloned().unwrap_or(Value::Array(Vec::new())),
    );
    if !queue.is_null() {
        arguments.insert("SqsQueueUrl".into(), queue);
    }
    arguments.insert(SDK_CALLBACK_INPUTS.into(), inputs);
    (Value::Object(arguments), refs, callback_outputs)
}

/// Where the free-form `Arguments` of an SDK-shaped Callback step are kept.
pub(super) const SDK_CALLBACK_INPUTS: &str = "Inputs";

fn check_output_parameters(v: Option<&Value>, list_ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Vec<String> {
    let mut names = Vec::new();
    let list = match v {
        None => return names,
        Some(Value::Array(list)) => list,
        Some(other) => {
            issues.push(Issue::new(
                list_ptr,
                format!(
                    "OutputParameters of step {label} must be a list, got {}",
                    type_name(other)
                ),
            ));
            return names;
        }
    };
    let types = crate::domain::params::ParamType::ALL.map(|t| t.as_str()).join(", ");
    for (i, item) in list.iter().enumerate() {
        let ptr = pointer_push(list_ptr, i);
        let Some(o) = item.as_object() else {
            issues.push(Issue::new(
                &ptr,
                format!("an output parameter of step {label} must be an object"),
            ));
            continue;
        };
        for key in o.keys().filter(|k| *k != "OutputName" && *k != "OutputType") {
            issues.push(Issue::new(
                pointer_push(&ptr, key),
                format!("unknown key {key:?} in an output parameter of step {label}; allowed: OutputName, OutputType"),
            ));
        }
        match o.get("OutputName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            None => issues.push(Issue::new(
                pointer_push(&ptr, "OutputName"),
                format!("an output parameter of step {label} needs OutputName, a non-empty string"),
            )),
            Some(n) if names.iter().any(|o| o == n) => issues.push(Issue::new(
                pointer_push(&ptr, "OutputName"),
                format!("duplicate output name {n} in step {label}"),
            )),
            Some(n) => names.push(n.to_string()),
        }
        if let Some(t) = o.get("OutputType") {
            if t.as_str().and_then(crate::domain::params::ParamType::parse).is_none() {
                issues.push(Issue::new(
                    pointer_push(&ptr, "OutputType"),
                    format!("OutputType {t} in step {label} is not one of: {types}"),
                ));
            }
        }
    }
    names
}
