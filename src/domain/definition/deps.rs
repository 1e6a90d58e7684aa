//! `DependsOn` entries: a step name (the upstream must succeed), or the
//! SageMaker SDK's `StepDependency` form `{"Step": NAME, "Trigger": T}`
//! with the values of its `TriggerCondition` (SPEC 8, 2.3).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{pointer_push, type_name, Issue};

/// The upstream outcome that lets a dependent step run (the SDK's
/// `TriggerCondition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Trigger {
    /// The upstream succeeded: a plain string entry.
    Completed,
    Failed,
    Stopped,
    /// The upstream ended, whatever its status (Skipped included).
    Any,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [Trigger::Completed, Trigger::Failed, Trigger::Stopped, Trigger::Any];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Completed => "Completed",
            Trigger::Failed => "Failed",
            Trigger::Stopped => "Stopped",
            Trigger::Any => "Any",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What the upstream's final status must be, for people.
    pub fn needs(self) -> &'static str {
        match self {
            Trigger::Completed => "ends Succeeded",
            Trigger::Failed => "ends Failed",
            Trigger::Stopped => "ends Stopped",
            Trigger::Any => "ends, whatever its status",
        }
    }

    /// Whether an upstream that ended with `status` meets this trigger.
    pub fn met_by(self, status: &str) -> bool {
        match self {
            Trigger::Completed => status == "Succeeded",
            Trigger::Failed => status == "Failed",
            Trigger::Stopped => status == "Stopped",
            Trigger::Any => matches!(status, "Succeeded" | "Failed" | "Stopped" | "Skipped"),
        }
    }
}

fn allowed_triggers() -> String {
    Trigger::ALL.map(Trigger::as_str).join(", ")
}

/// One `DependsOn` entry: the upstream's name, the entry's pointer and its trigger.
pub(super) type Dependency = (String, String, Trigger);

pub(super) fn parse_depends_on(v: Option<&Value>, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Vec<Dependency> {
    let ptr = pointer_push(ptr, "DependsOn");
    match v {
        None => Vec::new(),
        Some(Value::Array(list)) => {
            let mut out: Vec<Dependency> = Vec::new();
            for (i, d) in list.iter().enumerate() {
                let at = pointer_push(&ptr, i);
                let Some((name, trigger)) = parse_entry(d, &at, label, issues) else {
                    continue;
                };
                match out.iter().find(|(n, _, _)| *n == name) {
                    Some((_, _, t)) if *t != trigger => issues.push(Issue::new(
                        &at,
                        format!(
                            "DependsOn of step {label} names step {name:?} twice, with triggers {} and {}; \
                             list it once",
                            t.as_str(),
                            trigger.as_str()
                        ),
                    )),
                    _ => out.push((name, at, trigger)),
                }
            }
            out
        }
        Some(other) => {
            issues.push(Issue::new(
                ptr,
                format!(
                    "DependsOn of step {label} must be a list of step names or {{\"Step\": NAME, \"Trigger\": T}} \
                     entries, got {}",
                    type_name(other)
                ),
            ));
            Vec::new()
        }
    }
}

fn parse_entry(d: &Value, at: &str, label: &str, issues: &mut Vec<Issue>) -> Option<(String, Trigger)> {
    let shape = || {
        format!(
            "a DependsOn entry of step {label} is a step name or {{\"Step\": NAME, \"Trigger\": T}} with T one of: {}",
            allowed_triggers()
        )
    };
    let obj = match d {
        Value::String(s) => return Some((s.clone(), Trigger::Completed)),
        Value::Object(obj) => obj,
        other => {
            issues.push(Issue::new(at, format!("{}; got {}", shape(), type_name(other))));
            return None;
        }
    };
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !["Step", "Trigger"].contains(k))
        .collect();
    let step = obj.get("Step").and_then(Value::as_str);
    let trigger = obj
        .get("Trigger")
        .and_then(Value::as_str)
        .map(|t| (t, Trigger::parse(t)));
    match (unknown.is_empty(), step, trigger) {
        (true, Some(step), Some((_, Some(trigger)))) => Some((step.to_string(), trigger)),
        (true, Some(_), Some((t, None))) => {
            issues.push(Issue::new(
                pointer_push(at, "Trigger"),
                format!(
                    "DependsOn of step {label}: unknown Trigger {t:?}; allowed: {}",
                    allowed_triggers()
                ),
            ));
            None
        }
        (false, _, _) => {
            issues.push(Issue::new(
                at,
                format!("{}; unknown key(s): {}", shape(), unknown.join(", ")),
            ));
            None
        }
        _ => {
            issues.push(Issue::new(at, format!("{}; both keys are required", shape())));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> (Vec<Dependency>, Vec<Issue>) {
        let mut issues = Vec::new();
        let deps = parse_depends_on(Some(&v), "/Steps/0", "S", &mut issues);
        (deps, issues)
    }

    #[test]
    fn entries_are_names_or_triggers() {
        let (deps, issues) = parse(json!(["A", {"Step": "B", "Trigger": "Failed"}, {"Step": "C", "Trigger": "Any"}]));
        assert!(issues.is_empty(), "{issues:?}");
        let got: Vec<(&str, Trigger)> = deps.iter().map(|(n, _, t)| (n.as_str(), *t)).collect();
        assert_eq!(
            got,
            [("A", Trigger::Completed), ("B", Trigger::Failed), ("C", Trigger::Any)]
        );
    }

    #[test]
    fn bad_entries_get_one_issue_each() {
        for bad in [
            json!([{"Step": "B", "Trigger": "Failure"}]),
            json!([{"Step": "B"}]),
            json!([{"Step": "B", "Trigger": "Failed", "When": 1}]),
            json!([3]),
            json!(["B", {"Step": "B", "Trigger": "Any"}]),
        ] {
            let (_, issues) = parse(bad.clone());
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            let message = &issues[0].message;
            assert!(
                message.contains("Completed, Failed, Stopped, Any") || message.contains("twice"),
                "{message}"
            );
        }
    }

    #[test]
    fn triggers_are_met_by_final_statuses() {
        assert!(Trigger::Completed.met_by("Succeeded"));
        assert!(!Trigger::Completed.met_by("Failed"));
        assert!(Trigger::Failed.met_by("Failed"));
        assert!(!Trigger::Failed.met_by("Stopped"));
        assert!(Trigger::Stopped.met_by("Stopped"));
        for s in ["Succeeded", "Failed", "Stopped", "Skipped"] {
            assert!(Trigger::Any.met_by(s));
        }
        assert!(!Trigger::Any.met_by("Executing"));
    }
}
