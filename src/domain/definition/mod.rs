//! Pipeline definitions (SPEC 2): parsing and validating the SageMaker-shaped
//! JSON document into typed steps, parameters and the step DAG. Validation
//! collects every problem, each with a JSON pointer, so a user fixes a
//! definition in one round trip. A `Definition` that parses is runnable: all
//! references resolve to known things, and dependencies form a DAG.

mod args;
mod callback;
mod cleanup;
mod deps;
pub mod for_each;
mod refs;
mod steps;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use args::{cache_input_paths, CallbackArgs, CommandArgs};
pub use cleanup::cleanup_targets;
pub use deps::Trigger;

use super::{dag, duration, params, pointer_push, retry, type_name, Issue};

/// The only definition version there is (SageMaker's).
pub const VERSION: &str = "2020-12-01";

/// Every top-level key SageMaker accepts. `Metadata`,
/// `PipelineExperimentConfig` and `MlflowConfig` are kept in the stored
/// document as given (null or an object) and otherwise unused.
const TOP_LEVEL_KEYS: [&str; 6] = [
    "Version",
    "Metadata",
    "Parameters",
    "PipelineExperimentConfig",
    "MlflowConfig",
    "Steps",
];

#[derive(Debug, Clone)]
pub struct Definition {
    /// The normalized definition object (as given, string form parsed).
    pub document: Value,
    pub parameters: Vec<params::Parameter>,
    /// Pipeline order: top-level order, each Condition followed by its
    /// IfSteps then ElseSteps (recursively).
    pub steps: Vec<Step>,
    pub dag: dag::Dag,
    step_index: HashMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    Command,
    Pass,
    Condition,
    Fail,
    Callback,
    ForEach,
    Cleanup,
}

impl StepKind {
    pub const ALL: [StepKind; 7] = [
        StepKind::Command,
        StepKind::Pass,
        StepKind::Condition,
        StepKind::Fail,
        StepKind::Callback,
        StepKind::ForEach,
        StepKind::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Command => "Command",
            StepKind::Pass => "Pass",
            StepKind::Condition => "Condition",
            StepKind::Fail => "Fail",
            StepKind::Callback => "Callback",
            StepKind::Cleanup => "Cleanup",
            StepKind::ForEach => "ForEach",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        StepKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The top-level keys of this type's property document (SPEC 2.6).
    pub fn properties(self) -> &'static [&'static str] {
        match self {
            StepKind::Command => &["Outputs", "ExitCode", "ArtifactsUri"],
            StepKind::Pass => &["Outputs"],
            StepKind::Condition => &["Outcome"],
            StepKind::Callback => &["OutputParameters"],
            StepKind::Fail | StepKind::Cleanup => &[],
            StepKind::ForEach => &[
                "IterationOutputs",
                "Selected",
                "Status",
                "InputItemCount",
                "TotalStepCount",
                "SucceededStepCount",
                "FailedStepCount",
                "StoppedStepCount",
            ],
        }
    }

    /// Condition, Fail, Callback and Cleanup steps are never cached (SPEC
    /// 4): their effect is not a pure function of their inputs.
    pub fn is_cacheable(self) -> bool {
        matches!(self, StepKind::Command | StepKind::Pass)
    }
}

fn supported_types() -> String {
    StepKind::ALL.map(StepKind::as_str).join(", ")
}

/// Membership of a step in a Condition's branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub condition: String,
    /// `true` for IfSteps, `false` for ElseSteps.
    pub if_branch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub enabled: bool,
    pub expire_after: Option<duration::ExpireAfter>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    /// Raw Arguments with SageMaker's `PropertyFile` form of `Std:JsonGet`
    /// rewritten to the `Step`/`File` form; for Condition only
    /// `{"Conditions": [...]}` (branches are steps of their own).
    pub arguments: Value,
    /// All dependencies: DependsOn, every step referenced in Arguments, and
    /// for a branch step its Condition; deduplicated, in that order.
    pub depends_on: Vec<String>,
    /// The DependsOn entries whose trigger is not `Completed` (SPEC 8,
    /// 2.3), in DependsOn order. A step with any is a *handler*: it waits
    /// for its dependencies to end, whatever their status, and runs only if
    /// every trigger is met.
    pub triggers: Vec<(String, Trigger)>,
    pub branch: Option<Branch>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub cache: Option<CacheConfig>,
    pub retry_policies: Vec<retry::RetryPolicy>,
    /// `(PropertyFileName, FilePath)` pairs declared by a Command step.
    pub property_files: Vec<(String, String)>,
    /// JSON pointer of the step object in the document.
    pub pointer: String,
    /// The step object as given (for Condition, with branches removed): what
    /// "this step changed" is judged on.
    pub raw: Value,
    /// For a step of a ForEach body: that ForEach.
    pub parent: Option<String>,
    /// For a ForEach step: its items, concurrency, selector and body.
    pub for_each: Option<Box<for_each::ForEachSpec>>,
}

impl Step {
    /// Whether a run of this step looks up and writes cache entries.
    pub fn caching_enabled(&self) -> bool {
        self.kind.is_cacheable() && self.cache.is_some_and(|c| c.enabled)
    }

    /// The trigger of its dependency on `upstream` (`Completed` for a
    /// dependency that is not a non-default DependsOn entry).
    pub fn trigger_on(&self, upstream: &str) -> Trigger {
        self.triggers
            .iter()
            .find(|(n, _)| n == upstream)
            .map_or(Trigger::Completed, |(_, t)| *t)
    }

    /// The trigger map stored with its step run: `{upstream: trigger}` for
    /// every non-`Completed` entry; `None` for a step that has none.
    pub fn triggers_json(&self) -> Option<Value> {
        (!self.triggers.is_empty()).then(|| {
            Value::Object(
                self.triggers
                    .iter()
                    .map(|(n, t)| (n.clone(), Value::String(t.as_str().to_string())))
                    .collect(),
            )
        })
    }
}

impl Definition {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.step_index.get(name).map(|&i| &self.steps[i])
    }

    /// Whether some step has a non-`Completed` trigger.
    pub fn has_triggers(&self) -> bool {
        self.steps.iter().any(|s| !s.triggers.is_empty())
    }

    /// The ForEach step named `name`, with its items, body and selector.
    pub fn for_each(&self, name: &str) -> Option<&for_each::ForEachSpec> {
        self.step(name).and_then(|s| s.for_each.as_deref())
    }

    pub fn parameter(&self, name: &str) -> Option<&params::Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// The secrets the definition's Command steps use, sorted, each once.
    pub fn secret_names(&self) -> Vec<String> {
        let body_steps = self
            .steps
            .iter()
            .filter_map(|s| s.for_each.as_deref())
            .flat_map(|f| &f.body);
        let mut names: Vec<String> = self
            .steps
            .iter()
            .chain(body_steps)
            .filter(|s| s.kind == StepKind::Command)
            .flat_map(|s| super::secrets::env_secrets(&s.arguments))
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Effective parameter values for an execution: defaults overridden by `given`.
    pub fn resolve_parameters(&self, given: &Map<String, Value>) -> Result<Map<String, Value>, Vec<Issue>> {
        params::resolve_parameters(&self.parameters, given)
    }
}

/// Parses and validates a definition given as a JSON object or as a string
/// containing one (SageMaker sends a string). Returns every issue found.
pub fn parse_definition(input: &Value) -> Result<Definition, Vec<Issue>> {
    let document = match input {
        Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
            let why = super::json_syntax_error(&e);
            vec![Issue::new(
                "",
                format!("the definition string is not valid JSON: {why}"),
            )]
        })?,
        other => other.clone(),
    };
    // A NUL in an object body is refused with the request; one written as
    // `\u0000` inside the string form only appears now.
    if let Some(pointer) = super::find_nul(&document) {
        return Err(vec![Issue::new(
            pointer.clone(),
            format!("the NUL character (\\u0000) is not supported, found at {pointer:?}"),
        )]);
    }
    let Some(top) = document.as_object() else {
        return Err(vec![Issue::new(
            "",
            format!("the definition must be a JSON object, got {}", type_name(&document)),
        )]);
    };
    let mut issues = Vec::new();
    check_top_level(top, &mut issues);
    let parameters = parse_parameters(top.get("Parameters"), &mut issues);

    let mut pending = Vec::new();
    match top.get("Steps") {
        Some(Value::Array(list)) if !list.is_empty() => steps::collect(list, "/Steps", &[], &mut pending, &mut issues),
        Some(Value::Array(_)) => issues.push(Issue::new("/Steps", "Steps must contain at least one step")),
        Some(other) => issues.push(Issue::new(
            "/Steps",
            format!("Steps must be a list of steps, got {}", type_name(other)),
        )),
        None => issues.push(Issue::new("/Steps", "Steps is required (a non-empty list of steps)")),
    }

    let (steps, _) = refs::link(pending, &parameters, &mut issues);
    let steps = for_each::nest(steps, &mut issues);
    let mut step_index: HashMap<String, usize> = HashMap::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        step_index.entry(s.name.clone()).or_insert(i);
    }
    let nodes: Vec<(String, Vec<String>)> = steps
        .iter()
        .enumerate()
        // Duplicated and missing names are already issues; the graph holds
        // each name's first step only.
        .filter(|(i, s)| step_index.get(&s.name) == Some(i))
        .map(|(_, s)| (s.name.clone(), s.depends_on.clone()))
        .collect();
    let dag = match dag::Dag::build(&nodes) {
        Ok(dag) => Some(dag),
        Err(cycles) => {
            for cycle in cycles {
                let first = &steps[step_index[&cycle[0]]];
                let mut names = cycle.clone();
                names.push(cycle[0].clone());
                issues.push(Issue::new(
                    &first.pointer,
                    format!("dependency cycle: {}", names.join(" -> ")),
                ));
            }
            None
        }
    };
    match dag {
        Some(dag) if issues.is_empty() => Ok(Definition {
            document,
            parameters,
            steps,
            dag,
            step_index,
        }),
        _ => Err(issues),
    }
}

fn check_top_level(top: &Map<String, Value>, issues: &mut Vec<Issue>) {
    for key in top.keys().filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push("", key),
            format!("unknown top-level key {key:?}; allowed: {}", TOP_LEVEL_KEYS.join(", ")),
        ));
    }
    match top.get("Version") {
        Some(Value::String(v)) if v == VERSION => {}
        Some(other) => issues.push(Issue::new(
            "/Version",
            format!("unsupported Version {other}; expected \"{VERSION}\""),
        )),
        None => issues.push(Issue::new(
            "/Version",
            format!("Version is required and must be \"{VERSION}\""),
        )),
    }
    for key in ["Metadata", "PipelineExperimentConfig", "MlflowConfig"] {
        if let Some(v) = top.get(key).filter(|v| !v.is_object() && !v.is_null()) {
            issues.push(Issue::new(
                pointer_push("", key),
                format!("{key} must be an object, got {}", type_name(v)),
            ));
        }
    }
}

const PARAMETER_KEYS: [&str; 4] = ["Name", "Type", "DefaultValue", "EnumValues"];

fn parse_parameters(v: Option<&Value>, issues: &mut Vec<Issue>) -> Vec<params::Parameter> {
    let list = match v {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            issues.push(Issue::new(
                "/Parameters",
                format!("Parameters must be a list, got {}", type_name(other)),
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<params::Parameter> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, item) in list.iter().enumerate() {
        let ptr = pointer_push("/Parameters", i);
        if let Some(p) = parse_parameter(item, &ptr, &mut seen, issues) {
            out.push(p);
        }
    }
    out
}

fn parse_parameter(
    v: &Value,
    ptr: &str,
    seen: &mut HashMap<String, String>,
    issues: &mut Vec<Issue>,
) -> Option<params::Parameter> {
    let Some(obj) = v.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!("a parameter must be an object, got {}", type_name(v)),
        ));
        return None;
    };
    let before = issues.len();
    let name = obj.get("Name").and_then(Value::as_str).unwrap_or("");
    let label = if name.is_empty() {
        format!("at {ptr}")
    } else {
        name.to_string()
    };
    for key in obj.keys().filter(|k| !PARAMETER_KEYS.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(ptr, key),
            format!(
                "unknown key {key:?} in parameter {label}; allowed: {}",
                PARAMETER_KEYS.join(", ")
            ),
        ));
    }
    let name_ptr = pointer_push(ptr, "Name");
    match obj.get("Name") {
        Some(Value::String(n)) => {
            if let Err(e) = super::names::check_parameter_name(n) {
                issues.push(Issue::new(&name_ptr, e));
            } else if let Some(first) = seen.get(n) {
                issues.push(Issue::new(
                    &name_ptr,
                    format!("duplicate parameter name {n} (first declared at {first})"),
                ));
            } else {
                seen.insert(n.clone(), ptr.to_string());
            }
        }
        _ => issues.push(Issue::new(&name_ptr, "a parameter needs a Name string")),
    }
    let all_types = params::ParamType::ALL.map(params::ParamType::as_str).join(", ");
    let kind = match obj.get("Type") {
        Some(Value::String(t)) => params::ParamType::parse(t).or_else(|| {
            issues.push(Issue::new(
                pointer_push(ptr, "Type"),
                format!("parameter {label} has unknown Type {t:?}; supported: {all_types}"),
            ));
            None
        }),
        _ => {
            issues.push(Issue::new(
                pointer_push(ptr, "Type"),
                format!("parameter {label} needs a Type, one of: {all_types}"),
            ));
            None
        }
    };
    let enum_values = match obj.get("EnumValues") {
        None | Some(Value::Null) => None,
        Some(Value::Array(vals)) if !vals.is_empty() && vals.iter().all(Value::is_string) => {
            if kind.is_some_and(|k| k != params::ParamType::String) {
                issues.push(Issue::new(
                    pointer_push(ptr, "EnumValues"),
                    format!("EnumValues are only allowed for String parameters; {label} is not a String"),
                ));
            }
            Some(vals.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        }
        Some(_) => {
            issues.push(Issue::new(
                pointer_push(ptr, "EnumValues"),
                format!("EnumValues of parameter {label} must be a non-empty list of strings"),
            ));
            None
        }
    };
    let kind = kind?;
    let mut param = params::Parameter {
        name: name.to_string(),
        kind,
        default: None,
        enum_values,
    };
    if let Some(d) = obj.get("DefaultValue").filter(|d| !d.is_null()) {
        match params::coerce(&param, d) {
            Ok(v) => param.default = Some(v),
            Err(e) => issues.push(Issue::new(pointer_push(ptr, "DefaultValue"), e)),
        }
    }
    (issues.len() == before).then_some(param)
}

#[cfg(test)]
mod tests;
