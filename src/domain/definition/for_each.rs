//! The `ForEach` step (SPEC 8): `IterableItems`, `MaxConcurrency`,
//! `ForEachBody` and an optional `Selector`, in the shape the SageMaker SDK
//! v3 writes. The body's steps are parsed and linked with every other step
//! (names are unique across the pipeline, as in SageMaker), then moved into
//! their ForEach: they are not steps of the pipeline's DAG but the template
//! of each iteration.

use serde_json::{Map, Value};

use super::steps::unknown_keys;
use super::{Step, StepKind};
use crate::domain::expr::{self, Found, PathSegment, Reference};
use crate::domain::{pointer_push, type_name, Issue};

/// The most items a literal `IterableItems` list may hold. A list computed
/// at run time is bounded by `worker.for_each_max_items`.
pub const MAX_LITERAL_ITEMS: usize = 10_000;
/// The most iterations of one ForEach that run at once.
pub const MAX_CONCURRENCY: u64 = 1_000;

/// The step types a ForEach body may hold.
pub const BODY_KINDS: [StepKind; 4] = [StepKind::Command, StepKind::Pass, StepKind::Callback, StepKind::Fail];

const KEYS: [&str; 4] = ["IterableItems", "MaxConcurrency", "ForEachBody", "Selector"];

#[derive(Debug, Clone)]
pub struct ForEachSpec {
    /// `IterableItems` as written: a list (of values and expressions) or one
    /// expression that resolves to a list (or to a string holding a JSON list).
    pub items: Value,
    pub max_concurrency: u32,
    pub selector: Option<Selector>,
    /// The body's steps in the order written; each one's `depends_on` names
    /// its siblings and the steps outside the body it reads.
    pub body: Vec<Step>,
}

impl ForEachSpec {
    pub fn body_step(&self, name: &str) -> Option<&Step> {
        self.body.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    MaxBy,
    MinBy,
}

impl Pick {
    pub fn as_str(self) -> &'static str {
        match self {
            Pick::MaxBy => "MaxBy",
            Pick::MinBy => "MinBy",
        }
    }
}

/// Picks one iteration by comparing a field of one body step's property
/// document across iterations.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub pick: Pick,
    /// The body step whose property document is compared (and then exposed
    /// as `Selected`).
    pub step: String,
    pub path: Vec<PathSegment>,
}

/// What parsing a ForEach's Arguments yields before the body is linked.
pub(super) struct Parsed<'a> {
    /// The Arguments without the body (the body's steps are steps of their own).
    pub arguments: Value,
    pub refs: Vec<Found>,
    pub body: &'a [Value],
    pub spec: ForEachSpec,
}

pub(super) fn parse<'a>(obj: &'a Map<String, Value>, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Parsed<'a> {
    unknown_keys(obj, &KEYS, ptr, label, issues);
    let items_ptr = pointer_push(ptr, "IterableItems");
    let items = obj.get("IterableItems").cloned().unwrap_or(Value::Null);
    match &items {
        Value::Array(list) if list.is_empty() => issues.push(Issue::new(
            &items_ptr,
            format!("IterableItems of ForEach step {label} is an empty list; give at least one item"),
        )),
        Value::Array(list) if list.len() > MAX_LITERAL_ITEMS => issues.push(Issue::new(
            &items_ptr,
            format!(
                "IterableItems of ForEach step {label} lists {} items; at most {MAX_LITERAL_ITEMS} are allowed",
                list.len()
            ),
        )),
        Value::Array(_) => {}
        v if expr::is_expression(v) => {}
        Value::Null => issues.push(Issue::new(
            &items_ptr,
            format!(
                "ForEach step {label} needs IterableItems: a list, or an expression (a parameter or a step's \
                 output) that resolves to a list"
            ),
        )),
        other => issues.push(Issue::new(
            &items_ptr,
            format!(
                "IterableItems of ForEach step {label} must be a list or an expression that resolves to one, got {}",
                type_name(other)
            ),
        )),
    }
    let refs = expr::find_references(&items, &items_ptr, issues);
    let max_concurrency = match obj.get("MaxConcurrency") {
        Some(v) if v.as_u64().is_some_and(|n| (1..=MAX_CONCURRENCY).contains(&n)) => v.as_u64().unwrap_or(1) as u32,
        Some(v) => {
            issues.push(Issue::new(
                pointer_push(ptr, "MaxConcurrency"),
                format!(
                    "MaxConcurrency of ForEach step {label} must be an integer from 1 to {MAX_CONCURRENCY}, got {v}"
                ),
            ));
            1
        }
        None => {
            issues.push(Issue::new(
                pointer_push(ptr, "MaxConcurrency"),
                format!(
                    "ForEach step {label} needs MaxConcurrency, the number of iterations that may run at once \
                     (1 to {MAX_CONCURRENCY})"
                ),
            ));
            1
        }
    };
    let body_ptr = pointer_push(ptr, "ForEachBody");
    let body: &[Value] = match obj.get("ForEachBody") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(other) if !other.is_array() => {
            issues.push(Issue::new(
                &body_ptr,
                format!(
                    "ForEachBody of step {label} must be a list of steps, got {}",
                    type_name(other)
                ),
            ));
            &[]
        }
        _ => {
            issues.push(Issue::new(
                &body_ptr,
                format!("ForEach step {label} needs ForEachBody, a non-empty list of steps"),
            ));
            &[]
        }
    };
    let selector = obj
        .get("Selector")
        .filter(|v| !v.is_null())
        .and_then(|v| parse_selector(v, &pointer_push(ptr, "Selector"), label, issues));
    let mut arguments = obj.clone();
    arguments.remove("ForEachBody");
    Parsed {
        arguments: Value::Object(arguments),
        refs,
        body,
        spec: ForEachSpec {
            items,
            max_concurrency,
            selector,
            body: Vec::new(),
        },
    }
}

fn parse_selector(v: &Value, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Option<Selector> {
    let Some(obj) = v.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!("Selector of ForEach step {label} must be an object with Pick and Field"),
        ));
        return None;
    };
    for key in obj.keys().filter(|k| *k != "Pick" && *k != "Field") {
        issues.push(Issue::new(
            pointer_push(ptr, key),
            format!("unknown key {key:?} in the Selector of step {label}; allowed: Pick, Field"),
        ));
    }
    let pick = match obj.get("Pick").and_then(Value::as_str) {
        Some("MaxBy") => Some(Pick::MaxBy),
        Some("MinBy") => Some(Pick::MinBy),
        _ => {
            issues.push(Issue::new(
                pointer_push(ptr, "Pick"),
                format!("Selector.Pick of step {label} must be \"MaxBy\" or \"MinBy\""),
            ));
            None
        }
    };
    let field_ptr = pointer_push(ptr, "Field");
    let field = match obj.get("Field").and_then(|f| f.get("Get")).and_then(Value::as_str) {
        Some(get) => match expr::parse_get(get) {
            Ok(Reference::IterationOutput { step, path }) if !path.is_empty() => Some((step, path)),
            Ok(_) => {
                issues.push(Issue::new(
                    &field_ptr,
                    format!(
                        "Selector.Field of step {label} must read a body step's output, such as \
                         {{\"Get\": \"IterationOutput.Score.Outputs.accuracy\"}}; got {get:?}"
                    ),
                ));
                None
            }
            Err(e) => {
                issues.push(Issue::new(&field_ptr, format!("Selector.Field of step {label}: {e}")));
                None
            }
        },
        None => {
            issues.push(Issue::new(
                &field_ptr,
                format!(
                    "Selector of step {label} needs Field, such as {{\"Get\": \"IterationOutput.Score.Outputs.accuracy\"}}"
                ),
            ));
            None
        }
    };
    let (step, path) = field?;
    Some(Selector {
        pick: pick?,
        step,
        path,
    })
}

/// Moves each body step into its ForEach, and makes every step a body reads
/// from outside its body a dependency of the ForEach itself. Returns the
/// top-level steps.
pub(super) fn nest(steps: Vec<Step>, issues: &mut Vec<Issue>) -> Vec<Step> {
    let (body_steps, mut top): (Vec<Step>, Vec<Step>) = steps.into_iter().partition(|s| s.parent.is_some());
    for step in body_steps {
        let parent = step.parent.clone().unwrap_or_default();
        if let Some(spec) = top
            .iter_mut()
            .find(|s| s.name == parent)
            .and_then(|s| s.for_each.as_mut())
        {
            spec.body.push(step);
        }
    }
    for f in &mut top {
        let Some(spec) = f.for_each.as_mut() else { continue };
        let names: Vec<String> = spec.body.iter().map(|s| s.name.clone()).collect();
        for dep in spec.body.iter().flat_map(|s| &s.depends_on) {
            if !names.contains(dep) && !f.depends_on.contains(dep) {
                f.depends_on.push(dep.clone());
            }
        }
        if let Some(sel) = &spec.selector {
            if !names.contains(&sel.step) {
                issues.push(Issue::new(
                    pointer_push(
                        &pointer_push(&pointer_push(&f.pointer, "Arguments"), "Selector"),
                        "Field",
                    ),
                    format!(
                        "the Selector of ForEach step {} reads IterationOutput.{}, which is not a step of its \
                         body; its body steps: [{}]",
                        f.name,
                        sel.step,
                        names.join(", ")
                    ),
                ));
            }
        }
        let nodes: Vec<(String, Vec<String>)> = spec
            .body
            .iter()
            .map(|s| {
                let local = s.depends_on.iter().filter(|d| names.contains(d)).cloned().collect();
                (s.name.clone(), local)
            })
            .collect();
        if let Err(cycles) = crate::domain::dag::Dag::build(&nodes) {
            for cycle in cycles {
                let mut shown = cycle.clone();
                shown.push(cycle[0].clone());
                issues.push(Issue::new(
                    pointer_push(&pointer_push(&f.pointer, "Arguments"), "ForEachBody"),
                    format!(
                        "dependency cycle in the body of ForEach step {}: {}",
                        f.name,
                        shown.join(" -> ")
                    ),
                ));
            }
        }
    }
    top
}

/// The Selector of a ForEach step's stored Arguments (already validated).
pub fn selector_of(arguments: &Value) -> Option<Selector> {
    let mut issues = Vec::new();
    let selector = arguments
        .get("Selector")
        .filter(|v| !v.is_null())
        .and_then(|v| parse_selector(v, "", "", &mut issues));
    selector.filter(|_| issues.is_empty())
}
