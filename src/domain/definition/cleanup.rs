//! The `Cleanup` step's Arguments: `{"Resources": {"Artifacts": [{"StepName":
//! S}]}}` removes the artifacts directories of step S of the execution.
//! The SageMaker SDK's `CleanupStep` writes `"S3": [{"StepName": S,
//! "S3Uris": [...]}]`: an entry with only `StepName` means the same (a
//! stepwise step's outputs are its artifacts); exact S3 objects are not
//! something this server has.

use serde_json::{Map, Value};

use super::steps::unknown_keys;
use crate::domain::{pointer_push, type_name, Issue};

/// The kinds of resource a Cleanup step names, in the order they are read.
pub const RESOURCE_KINDS: [&str; 2] = ["Artifacts", "S3"];

/// Checks a Cleanup step's Arguments; returns the steps it names with the
/// pointer of each `StepName` (checked against the other steps in `refs`).
pub(super) fn check_cleanup(
    obj: &Map<String, Value>,
    ptr: &str,
    label: &str,
    issues: &mut Vec<Issue>,
) -> Vec<(String, String)> {
    unknown_keys(obj, &["Resources"], ptr, label, issues);
    let res_ptr = pointer_push(ptr, "Resources");
    let needs = format!(
        "Cleanup step {label} needs Resources, an object with Artifacts (or the SDK's S3): a list of \
         {{\"StepName\": NAME}} entries"
    );
    let Some(resources) = obj.get("Resources").and_then(Value::as_object) else {
        issues.push(Issue::new(res_ptr, needs));
        return Vec::new();
    };
    for key in resources.keys().filter(|k| !RESOURCE_KINDS.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(&res_ptr, key),
            format!(
                "unknown resource kind {key:?} in Cleanup step {label}; allowed: {}",
                RESOURCE_KINDS.join(", ")
            ),
        ));
    }
    let mut named = Vec::new();
    let mut entries = 0;
    for kind in RESOURCE_KINDS {
        let Some(list) = resources.get(kind) else { continue };
        let list_ptr = pointer_push(&res_ptr, kind);
        let Some(list) = list.as_array() else {
            issues.push(Issue::new(
                list_ptr,
                format!(
                    "Resources.{kind} of step {label} must be a list of {{\"StepName\": NAME}} entries, got {}",
                    type_name(list)
                ),
            ));
            continue;
        };
        entries += list.len();
        for (i, entry) in list.iter().enumerate() {
            let at = pointer_push(&list_ptr, i);
            if let Some(name) = check_entry(entry, kind, &at, label, issues) {
                named.push((name, pointer_push(&at, "StepName")));
            }
        }
    }
    if entries == 0 && issues.iter().all(|i| !i.path.starts_with(&res_ptr)) {
        issues.push(Issue::new(res_ptr, needs));
    }
    named
}

fn check_entry(entry: &Value, kind: &str, at: &str, label: &str, issues: &mut Vec<Issue>) -> Option<String> {
    let Some(obj) = entry.as_object() else {
        issues.push(Issue::new(
            at,
            format!(
                "an entry of Resources.{kind} of step {label} must be {{\"StepName\": NAME}}, got {}",
                type_name(entry)
            ),
        ));
        return None;
    };
    let name = obj.get("StepName").and_then(Value::as_str);
    if kind == "S3" && obj.contains_key("S3Uris") {
        let instead = name.map_or("{\"StepName\": NAME}".to_string(), |n| {
            format!("{{\"StepName\": {n:?}}}")
        });
        issues.push(Issue::new(
            pointer_push(at, "S3Uris"),
            format!(
                "Cleanup step {label}: S3 objects are not supported by this server (stepwise keeps a step's \
                 artifacts in its data directory, not in S3); to remove the artifacts of a step, write \
                 {instead} without S3Uris"
            ),
        ));
        return None;
    }
    let allowed: &[&str] = &["StepName"];
    let before = issues.len();
    unknown_keys(obj, allowed, at, label, issues);
    match name {
        Some(n) if !n.is_empty() => (issues.len() == before).then(|| n.to_string()),
        _ => {
            issues.push(Issue::new(
                pointer_push(at, "StepName"),
                format!("an entry of Resources.{kind} of step {label} needs StepName, the name of a step"),
            ));
            None
        }
    }
}

/// The steps a Cleanup step's (validated) Arguments name, each once, in order.
pub fn cleanup_targets(arguments: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for kind in RESOURCE_KINDS {
        let entries = arguments
            .pointer(&format!("/Resources/{kind}"))
            .and_then(Value::as_array);
        for entry in entries.into_iter().flatten() {
            if let Some(n) = entry.get("StepName").and_then(Value::as_str) {
                if !names.iter().any(|m| m == n) {
                    names.push(n.to_string());
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(args: Value) -> (Vec<(String, String)>, Vec<Issue>) {
        let mut issues = Vec::new();
        let named = check_cleanup(args.as_object().unwrap(), "/Steps/1/Arguments", "C", &mut issues);
        (named, issues)
    }

    #[test]
    fn artifacts_and_s3_entries_name_steps() {
        let (named, issues) = check(json!({"Resources": {
            "Artifacts": [{"StepName": "A"}], "S3": [{"StepName": "B"}]}}));
        assert!(issues.is_empty(), "{issues:?}");
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(named[1].1, "/Steps/1/Arguments/Resources/S3/0/StepName");
        let args = json!({"Resources": {"Artifacts": [{"StepName": "A"}], "S3": [{"StepName": "A"}]}});
        assert_eq!(cleanup_targets(&args), ["A"]);
    }

    #[test]
    fn each_problem_is_one_issue() {
        for (args, at) in [
            (
                json!({"Resources": {"S3": [{"StepName": "B", "S3Uris": ["s3://b/k"]}]}}),
                "/S3/0/S3Uris",
            ),
            (
                json!({"Resources": {"Artifacts": [{"StepName": "B", "Path": "x"}]}}),
                "/Artifacts/0/Path",
            ),
            (json!({"Resources": {"Artifacts": [{}]}}), "/Artifacts/0/StepName"),
            (json!({"Resources": {"Disks": []}}), "/Disks"),
            (json!({"Resources": {"Artifacts": []}}), "/Resources"),
            (json!({}), "/Resources"),
        ] {
            let (_, issues) = check(args.clone());
            assert_eq!(issues.len(), 1, "{args}: {issues:?}");
            assert!(issues[0].path.ends_with(at), "{args}: {issues:?}");
        }
    }
}
