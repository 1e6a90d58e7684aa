//! Cross-step linking: unique names, DependsOn and expression references
//! resolved against the other steps and the parameters, the dependency lists,
//! and the branch rule (a step cannot wait for a step in the opposite branch
//! of the same Condition: exactly one of the two runs).

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::callback::{is_sdk_callback, SDK_CALLBACK_INPUTS};
use super::steps::{check_artifact_path, Pending};
use super::{Step, StepKind, Trigger};
use crate::domain::expr::{format_path, Found, PathSegment, Reference};
use crate::domain::params::Parameter;
use crate::domain::{pointer_push, Issue};

/// Turns parsed steps into final steps with their dependencies, reporting
/// every cross-step problem. Returns the steps and the index of each name's
/// first step.
pub(super) fn link(
    pending: Vec<Pending>,
    parameters: &[Parameter],
    issues: &mut Vec<Issue>,
) -> (Vec<Step>, HashMap<String, usize>) {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(pending.len());
    for (i, p) in pending.iter().enumerate() {
        let name = &p.step.name;
        if name.is_empty() {
            continue;
        }
        match index.get(name) {
            Some(&first) => issues.push(Issue::new(
                pointer_push(&p.step.pointer, "Name"),
                format!(
                    "duplicate step name {name} (first defined at {})",
                    pending[first].step.pointer
                ),
            )),
            None => {
                index.insert(name.clone(), i);
            }
        }
    }
    let params: HashSet<&str> = parameters.iter().map(|p| p.name.as_str()).collect();
    let cx = Linker {
        pending: &pending,
        index: &index,
        params: &params,
    };
    let mut all_deps = Vec::with_capacity(pending.len());
    let mut all_rewrites = Vec::with_capacity(pending.len());
    let mut all_triggers = Vec::with_capacity(pending.len());
    for i in 0..pending.len() {
        let (deps, rewrites) = cx.step_deps(i, issues);
        all_deps.push(deps);
        all_rewrites.push(rewrites);
        all_triggers.push(cx.triggers(i, issues));
        cx.check_cleanup_targets(i, issues);
    }
    check_selectors(&pending, &index, issues);
    let steps = pending
        .into_iter()
        .zip(all_deps)
        .zip(all_rewrites)
        .zip(all_triggers)
        .map(|(((p, deps), rewrites), triggers)| {
            let mut step = p.step;
            step.depends_on = deps;
            step.triggers = triggers;
            apply_rewrites(&mut step, rewrites);
            step
        })
        .collect();
    (steps, index)
}

struct Linker<'a> {
    pending: &'a [Pending],
    index: &'a HashMap<String, usize>,
    params: &'a HashSet<&'a str>,
}

/// A `PropertyFile`-form `Std:JsonGet` to rewrite: (pointer, step, file).
type Rewrite = (String, String, String);

impl Linker<'_> {
    fn label(&self, i: usize) -> String {
        let p = &self.pending[i];
        if p.step.name.is_empty() {
            format!("at {}", p.step.pointer)
        } else {
            p.step.name.clone()
        }
    }

    /// The non-`Completed` DependsOn entries of step `i` that name another
    /// known step. A step reading the properties of an upstream it may run
    /// without (a Failed, Stopped or Any trigger) is an issue: that upstream
    /// has no outputs unless it succeeded.
    fn triggers(&self, i: usize, issues: &mut Vec<Issue>) -> Vec<(String, Trigger)> {
        let p = &self.pending[i];
        let triggers: Vec<(String, Trigger)> = p
            .explicit_deps
            .iter()
            .filter(|(n, _, t)| *t != Trigger::Completed && *n != p.step.name && self.index.contains_key(n))
            .map(|(n, _, t)| (n.clone(), *t))
            .collect();
        if p.body_of.is_some() {
            // Iterations are scheduled as a unit; a body step's entries
            // with a trigger would silently mean Completed.
            for (n, ptr, t) in p.explicit_deps.iter().filter(|(_, _, t)| *t != Trigger::Completed) {
                issues.push(Issue::new(
                    ptr,
                    format!(
                        "step {} is in a ForEachBody, whose steps run after their dependencies succeeded; \
                         its DependsOn entry on {n:?} with trigger {} is not supported there (put the \
                         trigger on a step after the ForEach step)",
                        self.label(i),
                        t.as_str()
                    ),
                ));
            }
            return Vec::new();
        }
        for found in &p.refs {
            let Some(target) = found.step() else { continue };
            if let Some((_, t)) = triggers.iter().find(|(n, _)| n == target) {
                issues.push(Issue::new(
                    found.pointer(),
                    format!(
                        "step {} reads {} but depends on step {target} with trigger {}: it may run when \
                         {target} did not succeed, and then {target} has no outputs to read; read only steps \
                         it depends on with the default trigger (Completed)",
                        self.label(i),
                        describe(found),
                        t.as_str()
                    ),
                ));
            }
        }
        triggers
    }

    /// Every step a Cleanup step names must be one of its DependsOn entries:
    /// it may only remove what has ended.
    fn check_cleanup_targets(&self, i: usize, issues: &mut Vec<Issue>) {
        let p = &self.pending[i];
        for (name, ptr) in &p.cleanup_targets {
            if !self.index.contains_key(name) {
                issues.push(Issue::new(
                    ptr,
                    format!("Cleanup step {} names unknown step {name:?}", self.label(i)),
                ));
            } else if !p.explicit_deps.iter().any(|(n, _, _)| n == name) {
                issues.push(Issue::new(
                    ptr,
                    format!(
                        "Cleanup step {} removes the artifacts of step {name}, so it must run after it: add \
                         {name:?} (or {{\"Step\": {name:?}, \"Trigger\": \"Any\"}}) to its DependsOn",
                        self.label(i)
                    ),
                ));
            }
        }
    }

    fn step_deps(&self, i: usize, issues: &mut Vec<Issue>) -> (Vec<String>, Vec<Rewrite>) {
        let p = &self.pending[i];
        let me = p.step.name.as_str();
        let label = if me.is_empty() {
            format!("at {}", p.step.pointer)
        } else {
            me.to_string()
        };
        let mut deps: Vec<String> = Vec::new();
        let mut seen: HashSet<usize> = HashSet::new();
        let mut rewrites = Vec::new();
        let mut add = |target: usize, ptr: &str, issues: &mut Vec<Issue>| {
            if let Some(issue) = self.opposite_branch(i, target, ptr, &label) {
                issues.push(issue);
            }
            if seen.insert(target) {
                deps.push(self.pending[target].step.name.clone());
            }
        };

        for (dep, ptr, _) in &p.explicit_deps {
            match self.index.get(dep) {
                _ if dep == me => issues.push(Issue::new(ptr, format!("step {label} depends on itself"))),
                Some(&t) => match self.body_rule(i, t) {
                    Some(e) => issues.push(Issue::new(ptr, format!("DependsOn of step {label}: {e}"))),
                    None => add(t, ptr, issues),
                },
                None => issues.push(Issue::new(
                    ptr,
                    format!("DependsOn of step {label} names unknown step {dep:?}"),
                )),
            }
        }
        for found in &p.refs {
            let ptr = found.pointer();
            if let Found::Get {
                reference: Reference::Parameter(name),
                ..
            } = found
            {
                if !self.params.contains(name.as_str()) {
                    issues.push(Issue::new(
                        ptr,
                        format!("step {label} references unknown parameter {name:?} (Parameters.{name})"),
                    ));
                }
                continue;
            }
            if let Found::Get {
                reference: Reference::Secret(name),
                ..
            } = found
            {
                if let Some(issue) = misplaced_secret(p, ptr, name, &label) {
                    issues.push(issue);
                }
                continue;
            }
            if let Found::Get {
                reference: reference @ (Reference::CurrentItem(_) | Reference::CurrentIndex),
                ..
            } = found
            {
                if p.body_of.is_none() {
                    issues.push(Issue::new(
                        ptr,
                        format!("step {label} reads {reference}, which only a step inside a ForEach's ForEachBody has"),
                    ));
                }
                continue;
            }
            if let Found::Get {
                reference: reference @ Reference::IterationOutput { .. },
                ..
            } = found
            {
                issues.push(Issue::new(
                    ptr,
                    format!("step {label} reads {reference}; IterationOutput is only for a ForEach's Selector.Field"),
                ));
                continue;
            }
            let Some(target_name) = found.step() else { continue };
            let shown = describe(found);
            let Some(&t) = self.index.get(target_name) else {
                issues.push(Issue::new(
                    ptr,
                    format!("step {label} references unknown step {target_name:?} ({shown})"),
                ));
                continue;
            };
            if target_name == me {
                issues.push(Issue::new(ptr, format!("step {label} refers to itself ({shown})")));
                continue;
            }
            let target = &self.pending[t];
            if let Some(e) = self.body_rule(i, t) {
                issues.push(Issue::new(ptr, format!("step {label}: {shown}: {e}")));
                continue;
            }
            if let Err(e) = self.check_target(found, target) {
                issues.push(Issue::new(ptr, format!("step {label}: {shown}: {e}")));
            } else if let Found::PropertyFileGet { property_file, .. } = found {
                let file = target
                    .step
                    .property_files
                    .iter()
                    .find(|(n, _)| n == property_file)
                    .map(|(_, f)| f.clone())
                    .unwrap_or_default();
                rewrites.push((ptr.to_string(), target_name.to_string(), file));
            }
            add(t, ptr, issues);
        }
        if let Some(&(c, _)) = p.branch_path.last() {
            if !self.pending[c].step.name.is_empty() {
                add(c, &p.step.pointer, issues);
            }
        }
        (deps, rewrites)
    }

    /// Why step `i` may not depend on step `t` across a ForEach body's edge:
    /// a body step reads its siblings and steps outside every body (which
    /// become dependencies of its ForEach), never its own ForEach or another
    /// body; a step outside reads a body's results through its ForEach.
    fn body_rule(&self, i: usize, t: usize) -> Option<String> {
        let (mine, theirs) = (self.pending[i].body_of, self.pending[t].body_of);
        let name = |x: usize| self.pending[x].step.name.clone();
        match (mine, theirs) {
            (Some(f), _) if f == t => Some(format!(
                "a step of the body of ForEach {} cannot read that ForEach: it ends after all its iterations",
                name(f)
            )),
            (Some(f), Some(g)) if f != g => Some(format!(
                "{} is a step of the body of ForEach {}, which runs apart from ForEach {}",
                name(t),
                name(g),
                name(f)
            )),
            (None, Some(g)) => Some(format!(
                "{} runs once per item inside ForEach {g}; read Steps.{g}.IterationOutputs[i].{} or \
                 Steps.{g}.Selected instead",
                name(t),
                name(t),
                g = name(g)
            )),
            _ => None,
        }
    }

    /// Whether a read into ForEach `target`'s iterations
    /// (`IterationOutputs[i].<Body>.<path>`, `Selected.<path>`) names a
    /// property that body step has, as a read of that step would be checked.
    fn check_body_property(&self, target: &Pending, path: &[PathSegment]) -> Result<(), String> {
        let (body, rest) = match path {
            [PathSegment::Key(k), PathSegment::Index(_), PathSegment::Key(body), rest @ ..]
                if k == "IterationOutputs" =>
            {
                (body.as_str(), rest)
            }
            [PathSegment::Key(k), rest @ ..] if k == "Selected" => {
                match target.step.for_each.as_ref().and_then(|f| f.selector.as_ref()) {
                    Some(sel) => (sel.step.as_str(), rest),
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        if rest.is_empty() {
            return Ok(());
        }
        let Some(b) = self.index.get(body).map(|&t| &self.pending[t]) else {
            return Ok(());
        };
        match b.kind {
            Some(kind) => check_property(kind, body, &b.callback_outputs, rest),
            None => Ok(()),
        }
    }

    /// Whether `found` reads something `target` will actually have.
    fn check_target(&self, found: &Found, target: &Pending) -> Result<(), String> {
        // An unsupported Type is already an issue; do not pile more on it.
        let Some(kind) = target.kind else { return Ok(()) };
        let name = &target.step.name;
        match found {
            Found::Get {
                reference: Reference::Step { path, .. },
                ..
            } if kind == StepKind::ForEach => {
                check_for_each_property(target, path)?;
                self.check_body_property(target, path)
            }
            Found::Get {
                reference: Reference::Step { path, .. },
                ..
            } => check_property(kind, name, &target.callback_outputs, path),
            Found::Get { .. } => Ok(()),
            Found::JsonGet { file, .. } => {
                if kind != StepKind::Command {
                    return Err(format!(
                        "Std:JsonGet reads a step's artifacts, which only Command steps have; {name} is a {}",
                        kind.as_str()
                    ));
                }
                check_artifact_path(file)
            }
            Found::PropertyFileGet { property_file, .. } => {
                if kind != StepKind::Command {
                    return Err(format!(
                        "{name} is a {} step and declares no PropertyFiles",
                        kind.as_str()
                    ));
                }
                if target.step.property_files.iter().any(|(n, _)| n == property_file) {
                    Ok(())
                } else {
                    let declared: Vec<&str> = target.step.property_files.iter().map(|(n, _)| n.as_str()).collect();
                    Err(format!(
                        "step {name} declares no property file {property_file:?}; declared: [{}]",
                        declared.join(", ")
                    ))
                }
            }
        }
    }

    /// An issue when `target` is in the other branch of a Condition that also
    /// encloses step `i`: only one of the two can ever run.
    fn opposite_branch(&self, i: usize, target: usize, ptr: &str, label: &str) -> Option<Issue> {
        let mine = &self.pending[i].branch_path;
        let theirs = &self.pending[target].branch_path;
        for (a, b) in mine.iter().zip(theirs) {
            if a.0 != b.0 {
                return None;
            }
            if a.1 != b.1 {
                let side = |if_branch: bool| if if_branch { "IfSteps" } else { "ElseSteps" };
                let cond = &self.pending[a.0].step.name;
                let other = &self.pending[target].step.name;
                return Some(Issue::new(
                    ptr,
                    format!(
                        "step {label} (in the {} of Condition {cond}) depends on step {other} (in its {}); \
                         only one branch runs, so {other} is not an ancestor that can run before it",
                        side(a.1),
                        side(b.1)
                    ),
                ));
            }
        }
        None
    }
}

/// An issue unless the secret reference at `ptr` is the whole value of an
/// `Arguments.Env.<VAR>` of a Command step: the one place a value reaches
/// only a process, never an output, a message or the database.
fn misplaced_secret(p: &Pending, ptr: &str, name: &str, label: &str) -> Option<Issue> {
    let env = pointer_push(&pointer_push(&p.step.pointer, "Arguments"), "Env");
    let in_env = ptr
        .strip_prefix(env.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|var| !var.is_empty() && !var.contains('/'));
    match p.kind {
        Some(StepKind::Command) if in_env => None,
        // An unsupported Type is already an issue.
        None => None,
        _ => Some(Issue::new(
            ptr,
            format!(
                "step {label} uses secret {name:?} (Secrets.{name}) here; a secret may only be \
                 the whole value of a variable in a Command step's Arguments.Env"
            ),
        )),
    }
}

fn describe(found: &Found) -> String {
    match found {
        Found::Get { reference, .. } => reference.to_string(),
        Found::JsonGet { step, file, path, .. } => {
            format!(
                "Std:JsonGet {file} of step {step} at {}",
                format_path(path).trim_start_matches('.')
            )
        }
        Found::PropertyFileGet {
            step, property_file, ..
        } => {
            format!("Steps.{step}.PropertyFiles.{property_file}")
        }
    }
}

/// Whether each ForEach's `Selector.Field` names a property its body step
/// has (a Callback's declared output, a Command's or Pass's `Outputs`), as a
/// reference to that step would be checked. A Selector naming no body step
/// is reported by `for_each::nest`.
fn check_selectors(pending: &[Pending], index: &HashMap<String, usize>, issues: &mut Vec<Issue>) {
    for (i, p) in pending.iter().enumerate() {
        let Some(sel) = p.step.for_each.as_ref().and_then(|f| f.selector.as_ref()) else {
            continue;
        };
        let Some(&t) = index.get(&sel.step) else { continue };
        let body = &pending[t];
        let (Some(kind), Some(true)) = (body.kind, body.body_of.map(|b| b == i)) else {
            continue;
        };
        if let Err(e) = check_property(kind, &sel.step, &body.callback_outputs, &sel.path) {
            let ptr = pointer_push(
                &pointer_push(&pointer_push(&p.step.pointer, "Arguments"), "Selector"),
                "Field",
            );
            issues.push(Issue::new(ptr, format!("Selector.Field of step {}: {e}", p.step.name)));
        }
    }
}

/// Whether `path` names a property that a `kind` step's property document has.
fn check_property(kind: StepKind, step: &str, outputs: &[String], path: &[PathSegment]) -> Result<(), String> {
    let available = kind.properties();
    if available.is_empty() {
        return Err(format!("{} step {step} has no properties", kind.as_str()));
    }
    let list = available.join(", ");
    let first = match path.first() {
        Some(PathSegment::Key(k)) => k,
        Some(PathSegment::Index(_)) | None => {
            return Err(format!("a reference to step {step} must name a property: {list}"))
        }
    };
    if !available.contains(&first.as_str()) {
        let hint = if first == "PropertyFiles" {
            " (PropertyFiles are read with Std:JsonGet)"
        } else {
            ""
        };
        return Err(format!(
            "{} step {step} has no property {first:?}{hint}; available: {list}",
            kind.as_str()
        ));
    }
    match (first.as_str(), path.get(1)) {
        ("Outputs", _) | (_, None) => Ok(()),
        ("OutputParameters", Some(PathSegment::Key(out))) => {
            if outputs.contains(out) {
                Ok(())
            } else {
                Err(format!(
                    "Callback step {step} declares no output parameter {out:?}; declared: [{}]",
                    outputs.join(", ")
                ))
            }
        }
        ("OutputParameters", Some(PathSegment::Index(_))) => {
            Err(format!("OutputParameters of step {step} is a map keyed by OutputName"))
        }
        (prop, Some(_)) => Err(format!(
            "property {prop} of step {step} is a single value; it has no sub-path"
        )),
    }
}

/// Whether `path` names something a ForEach's property document has:
/// `IterationOutputs[i].<BodyStep>...`, `Selected...` (with a Selector), or
/// one of its counts.
fn check_for_each_property(target: &Pending, path: &[PathSegment]) -> Result<(), String> {
    let name = &target.step.name;
    let list = StepKind::ForEach.properties().join(", ");
    let first = match path.first() {
        Some(PathSegment::Key(k)) if StepKind::ForEach.properties().contains(&k.as_str()) => k.as_str(),
        _ => return Err(format!("ForEach step {name} has these properties: {list}")),
    };
    match first {
        "IterationOutputs" => match (path.get(1), path.get(2)) {
            // The whole list (a stepwise extension; the SDK reads one
            // iteration at a time): a fan-in that need not know the count.
            (None, _) => Ok(()),
            (Some(PathSegment::Index(_)), Some(PathSegment::Key(body))) if target.body_names.contains(body) => Ok(()),
            (Some(PathSegment::Index(_)), Some(PathSegment::Key(body))) => Err(format!(
                "{body} is not a step of the body of ForEach {name}; its body steps: [{}]",
                target.body_names.join(", ")
            )),
            _ => Err(format!(
                "IterationOutputs of ForEach {name} is read whole (Steps.{name}.IterationOutputs) or by \
                 iteration and body step, such as Steps.{name}.IterationOutputs[0].{}.Outputs",
                target.body_names.first().map_or("Body", String::as_str)
            )),
        },
        "Selected" if target.step.for_each.as_ref().is_some_and(|f| f.selector.is_none()) => Err(format!(
            "ForEach step {name} has no Selector, so it has no Selected iteration"
        )),
        "Selected" => Ok(()),
        prop if path.len() > 1 => Err(format!(
            "property {prop} of step {name} is a single value; it has no sub-path"
        )),
        _ => Ok(()),
    }
}

fn apply_rewrites(step: &mut Step, rewrites: Vec<Rewrite>) {
    let prefix = pointer_push(&step.pointer, "Arguments");
    // An SDK-shaped Callback keeps its free-form Arguments under Inputs.
    let sdk_callback = step.kind == StepKind::Callback && step.raw.as_object().is_some_and(is_sdk_callback);
    for (ptr, target, file) in rewrites {
        let Some(rel) = ptr.strip_prefix(&prefix) else { continue };
        let rel = if sdk_callback {
            format!("/{SDK_CALLBACK_INPUTS}{rel}")
        } else {
            rel.to_string()
        };
        let Some(slot) = step.arguments.pointer_mut(&rel) else {
            continue;
        };
        let path = slot["Std:JsonGet"]["Path"].clone();
        *slot = json!({"Std:JsonGet": {"Step": target, "File": file, "Path": path}});
    }
}
