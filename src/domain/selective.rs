//! Selective execution planning (SPEC 5): checking a request's selection
//! against the definition being started (unknown names, closure), checking it
//! against a source execution (upstream steps succeeded, reused Conditions took
//! the selected branch), and computing the `"changed"` selection. Everything
//! here is pure: the caller loads the source execution's step states and
//! snapshot and passes them in as [`SourceStep`]s.
//!
//! Definitions may hold 10,000 steps, so every check is linear in the size of
//! the graph: closure is two multi-source searches over the whole selection,
//! never a search per pair of selected steps.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::definition::{Definition, Step};
use super::expr::{self, Reference};
use super::Issue;

/// Where selection problems are reported in a start request.
pub const SELECTED_STEPS_PATH: &str = "/selective_execution/selected_steps";
/// Where problems with the source execution are reported in a start request.
pub const SOURCE_EXECUTION_PATH: &str = "/selective_execution/source_execution";
/// The status a source step needs to be reusable.
pub const SUCCEEDED: &str = "Succeeded";
/// How many of the pipeline's step names an "unknown steps" message lists.
const KNOWN_NAMES_SHOWN: usize = 20;

/// What the client asked for: a list of step names, or `"changed"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectedSteps {
    Names(Vec<String>),
    Changed,
}

impl Serialize for SelectedSteps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SelectedSteps::Names(names) => names.serialize(s),
            SelectedSteps::Changed => s.serialize_str("changed"),
        }
    }
}

impl<'de> Deserialize<'de> for SelectedSteps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor rather than `#[serde(untagged)]` so a wrong
        // value gets a message saying what is accepted.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SelectedSteps;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of step names or the string \"changed\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<SelectedSteps, E> {
                if s == "changed" {
                    Ok(SelectedSteps::Changed)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SelectedSteps, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(10_000));
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(SelectedSteps::Names(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// The request's selection checked against the definition being started
/// (rules 1 and 2). The four sets partition the definition's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub selected: BTreeSet<String>,
    /// U: ancestors of the selection that are not selected (need a source, rule 3).
    pub upstream: BTreeSet<String>,
    /// Non-selected steps downstream of any selected step (rule 8: Skipped/NotSelected).
    pub downstream: BTreeSet<String>,
    /// Every other step (neither selected, upstream, nor downstream): reused
    /// when it succeeded in the source, else Skipped/NotSelected (rule 6).
    pub others: BTreeSet<String>,
}

/// One step of the source (reference) execution as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStep {
    pub status: String,
    /// The Condition's `Outcome` if it succeeded.
    pub outcome: Option<bool>,
    /// The step's raw definition in the source's snapshot.
    pub raw: Option<Value>,
}

impl SourceStep {
    fn succeeded(&self) -> bool {
        self.status == SUCCEEDED
    }
}

/// Index-based adjacency of a definition's steps, in pipeline order.
struct Graph<'a> {
    names: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    fn new(def: &'a Definition) -> Self {
        let names: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut parents = vec![Vec::new(); names.len()];
        let mut children = vec![Vec::new(); names.len()];
        for (i, step) in def.steps.iter().enumerate() {
            // `depends_on` is deduplicated by the definition; unknown names
            // cannot occur in a parsed definition but are skipped regardless.
            for dep in &step.depends_on {
                if let Some(&d) = index.get(dep.as_str()) {
                    parents[i].push(d);
                    children[d].push(i);
                }
            }
        }
        Graph {
            names,
            index,
            parents,
            children,
        }
    }

    /// Multi-source breadth-first search along `next`. Each reached node is
    /// labelled with the start it was first reached from (starts label
    /// themselves), so a label is a witness: a start with a path to the node.
    fn reach(&self, starts: &[usize], next: &[Vec<usize>]) -> Vec<Option<usize>> {
        let mut label = vec![None; self.names.len()];
        let mut queue = VecDeque::with_capacity(starts.len());
        for &s in starts {
            if label[s].is_none() {
                label[s] = Some(s);
                queue.push_back(s);
            }
        }
        while let Some(n) = queue.pop_front() {
            for &m in &next[n] {
                if label[m].is_none() {
                    label[m] = label[n];
                    queue.push_back(m);
                }
            }
        }
        label
    }

    fn set(&self, members: impl Iterator<Item = usize>) -> BTreeSet<String> {
        members.map(|i| self.names[i].to_string()).collect()
    }
}

/// Checks a selection of step names against `def` (rules 1 and 2) and splits
/// the definition's steps into selected, upstream, downstream and others.
/// Duplicated names are fine.
pub fn select(def: &Definition, names: &[String]) -> Result<Selection, Vec<Issue>> {
    let g = Graph::new(def);
    if names.is_empty() {
        return Err(vec![Issue::new(
            SELECTED_STEPS_PATH,
            "selected_steps must name at least one step (or be \"changed\")",
        )]);
    }
    let mut chosen = vec![false; g.names.len()];
    let mut starts = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    let mut unknown_seen = HashSet::new();
    for name in names {
        match g.index.get(name.as_str()) {
            Some(&i) if !chosen[i] => {
                chosen[i] = true;
                starts.push(i);
            }
            Some(_) => {}
            None => {
                if unknown_seen.insert(name.as_str()) {
                    unknown.push(name);
                }
            }
        }
    }
    if !unknown.is_empty() {
        // Closure is not checked: with a misspelt name it would report
        // problems that disappear once the name is fixed.
        return Err(vec![Issue::new(
            SELECTED_STEPS_PATH,
            unknown_message(&unknown, &g.names),
        )]);
    }
    // Pipeline order for the searches, so witnesses in messages are stable.
    starts.sort_unstable();

    // `from[i]`: a selected step with a path to i; `to[i]`: a selected step
    // that i has a path to. A non-selected step with both lies between two
    // selected steps (rule 2).
    let from = g.reach(&starts, &g.children);
    let to = g.reach(&starts, &g.parents);
    let issues: Vec<Issue> = (0..g.names.len())
        .filter(|&i| !chosen[i])
        .filter_map(|i| Some((i, from[i]?, to[i]?)))
        .map(|(i, a, c)| {
            Issue::new(
                SELECTED_STEPS_PATH,
                format!(
                    "step {:?} lies on a path from selected step {:?} to selected step {:?} and must be selected too",
                    g.names[i], g.names[a], g.names[c]
                ),
            )
        })
        .collect();
    if !issues.is_empty() {
        return Err(issues);
    }

    let not_chosen = |i: &usize| !chosen[*i];
    let all = 0..g.names.len();
    Ok(Selection {
        selected: g.set(all.clone().filter(|&i| chosen[i])),
        upstream: g.set(all.clone().filter(not_chosen).filter(|&i| to[i].is_some())),
        downstream: g.set(all.clone().filter(not_chosen).filter(|&i| from[i].is_some())),
        others: g.set(all.filter(not_chosen).filter(|&i| from[i].is_none() && to[i].is_none())),
    })
}

fn unknown_message(unknown: &[&str], known: &[&str]) -> String {
    let mut shown = known
        .iter()
        .take(KNOWN_NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if known.len() > KNOWN_NAMES_SHOWN {
        shown.push_str(&format!(", ... ({} more)", known.len() - KNOWN_NAMES_SHOWN));
    }
    format!(
        "unknown steps in selected_steps: {}; the pipeline has: {shown}",
        super::json_list(unknown)
    )
}

/// Rule 3: every step of `sel.upstream` must exist in the source execution
/// (have an entry in `source`) and have succeeded there. `source_label` names
/// the source in messages (its ARN or id). One issue per offending step.
pub fn check_upstream(sel: &Selection, source: &HashMap<String, SourceStep>, source_label: &str) -> Vec<Issue> {
    sel.upstream
        .iter()
        .filter_map(|name| {
            let message = match source.get(name) {
                None => format!(
                    "step {name:?} is needed by the selection but is not in the definition execution {source_label} ran"
                ),
                Some(s) if !s.succeeded() => format!(
                    "step {name:?} is needed by the selection but did not succeed in execution {source_label}: its status there is {}",
                    s.status
                ),
                Some(_) => return None,
            };
            Some(Issue::new(SOURCE_EXECUTION_PATH, message))
        })
        .collect()
}

/// Rule 5 helper: whether a candidate source qualifies (every step of U
/// succeeded there).
pub fn qualifies(sel: &Selection, source: &HashMap<String, SourceStep>) -> bool {
    sel.upstream
        .iter()
        .all(|name| source.get(name).is_some_and(SourceStep::succeeded))
}

/// Rule 9: a selected step inside the branch that a reused Condition did not
/// take in the source. Walks each selected step's chain of enclosing
/// Conditions up to the first selected one (that one runs again and is
/// checked on its own); reports at most one issue per selected step. A
/// Condition that did not succeed in the source is left to [`check_upstream`].
pub fn check_branches(def: &Definition, sel: &Selection, source: &HashMap<String, SourceStep>) -> Vec<Issue> {
    let mut issues = Vec::new();
    for step in def.steps.iter().filter(|s| sel.selected.contains(&s.name)) {
        let mut cur = step;
        while let Some(branch) = &cur.branch {
            if sel.selected.contains(&branch.condition) {
                break;
            }
            let outcome = source
                .get(&branch.condition)
                .filter(|s| s.succeeded())
                .and_then(|s| s.outcome);
            if outcome.is_some_and(|o| o != branch.if_branch) {
                issues.push(Issue::new(
                    SELECTED_STEPS_PATH,
                    format!(
                        "selected step {:?} is in the {} of condition {:?}, which took the {} branch in the source execution",
                        step.name,
                        branch_key(branch.if_branch),
                        branch.condition,
                        branch_key(!branch.if_branch)
                    ),
                ));
                break;
            }
            match def.step(&branch.condition) {
                Some(c) => cur = c,
                None => break,
            }
        }
    }
    issues
}

fn branch_key(if_branch: bool) -> &'static str {
    if if_branch {
        "IfSteps"
    } else {
        "ElseSteps"
    }
}

/// The `"changed"` selection: the steps that changed themselves
/// ([`changes`]) and all of their descendants. Empty when nothing changed;
/// the caller reports that nothing needs to run.
pub fn changed_steps(
    def: &Definition,
    params: &Map<String, Value>,
    source_def: &Definition,
    source_params: &Map<String, Value>,
    source: &HashMap<String, SourceStep>,
) -> BTreeSet<String> {
    let changed = changes(def, params, source_def, source_params, source);
    let mut all: BTreeSet<String> = changed.keys().cloned().collect();
    all.extend(downstream_of(def, &changed).into_keys());
    all
}

/// The steps of `def` that changed themselves against the source, each with
/// what changed, for people: a new step; its dependency set or branch; a
/// parameter it uses (`parameter Epochs: 10 -> 12`); its definition as
/// written, with parameters substituted (`Arguments.Command[2]: "a" ->
/// "b"`); or that it did not succeed in the source (`Failed in the
/// source`). A step in a branch that a Condition of the source did not
/// take would not run: unchanged, it is not changed; edited or new, it
/// makes that Condition changed, so the Condition runs again and the step
/// comes in as its descendant.
/// Renaming a step for people (`DisplayName`, `Description`) changes
/// nothing. What a step reads from files (`CacheInputs`) and whether its
/// outputs are still there are for the caller, which reads them.
///
/// References to steps and execution variables are compared as written: a
/// step whose upstream changed is caught as a descendant
/// ([`downstream_of`]), and execution variables differ in every execution
/// by design.
pub fn changes(
    def: &Definition,
    params: &Map<String, Value>,
    source_def: &Definition,
    source_params: &Map<String, Value>,
    source: &HashMap<String, SourceStep>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for step in &def.steps {
        let Some(before) = source_def.step(&step.name) else {
            match not_taken_by(def, step, source) {
                Some(condition) => out
                    .entry(condition.to_string())
                    .or_default()
                    .push(format!("new step {:?} in a branch it did not take", step.name)),
                None => out.entry(step.name.clone()).or_default().push("new step".into()),
            }
            continue;
        };
        let mut why = Vec::new();
        let deps: BTreeSet<&String> = step.depends_on.iter().collect();
        let deps_before: BTreeSet<&String> = before.depends_on.iter().collect();
        if deps != deps_before {
            why.push(format!(
                "dependencies: {} -> {}",
                super::json_list(deps_before),
                super::json_list(deps)
            ));
        }
        if step.branch != before.branch {
            why.push(format!(
                "branch: {} -> {}",
                describe_branch(before.branch.as_ref()),
                describe_branch(step.branch.as_ref())
            ));
        }
        let (now, then) = (cosmetic_free(&step.raw), cosmetic_free(&before.raw));
        if env_as_text(substitute_parameters(&now, params)) != env_as_text(substitute_parameters(&then, source_params))
        {
            for name in parameters_used(&now) {
                let (new, old) = (params.get(&name), source_params.get(&name));
                if new != old {
                    why.push(format!("parameter {name}: {} -> {}", show(old), show(new)));
                }
            }
            if now != then {
                why.extend(super::cache::differences(&now, &then));
            }
            if why.is_empty() {
                // Only a parameter value that the step used before changed.
                why.push("a parameter it uses changed".into());
            }
        }
        if let Some(condition) = not_taken_by(def, step, source) {
            // It would not run: its Condition takes the same branch as in
            // the source. Edited, it makes that Condition run again, and
            // the step comes in as its descendant.
            if !why.is_empty() {
                let entry: &mut Vec<String> = out.entry(condition.to_string()).or_default();
                entry.push(format!("step {:?} in a branch it did not take changed", step.name));
            }
            continue;
        }
        if why.is_empty() {
            match source.get(&step.name) {
                None => why.push("not run in the source".into()),
                Some(s) if !s.succeeded() => why.push(format!("{} in the source", s.status)),
                Some(_) => {}
            }
        }
        if !why.is_empty() {
            out.entry(step.name.clone()).or_default().extend(why);
        }
    }
    out
}

/// The outermost Condition of the source whose branch not taken holds
/// `step` (through its chain of enclosing Conditions), if any.
fn not_taken_by<'a>(def: &'a Definition, step: &'a Step, source: &HashMap<String, SourceStep>) -> Option<&'a str> {
    let mut found = None;
    let mut cur = step;
    while let Some(branch) = &cur.branch {
        let outcome = source
            .get(&branch.condition)
            .filter(|s| s.succeeded())
            .and_then(|s| s.outcome);
        if outcome.is_some_and(|o| o != branch.if_branch) {
            found = Some(branch.condition.as_str());
        }
        match def.step(&branch.condition) {
            Some(c) => cur = c,
            None => break,
        }
    }
    found
}

/// Every step downstream of a step of `changed` that is not in it, with the
/// nearest such step it descends from (`downstream of Train`).
pub fn downstream_of<T>(def: &Definition, changed: &BTreeMap<String, T>) -> BTreeMap<String, String> {
    let g = Graph::new(def);
    let mut starts: Vec<usize> = changed
        .keys()
        .filter_map(|n| g.index.get(n.as_str()).copied())
        .collect();
    starts.sort_unstable();
    let reached = g.reach(&starts, &g.children);
    (0..g.names.len())
        .filter(|i| !changed.contains_key(g.names[*i]))
        .filter_map(|i| Some((g.names[i].to_string(), g.names[reached[i]?].to_string())))
        .collect()
}

fn describe_branch(branch: Option<&super::definition::Branch>) -> String {
    match branch {
        None => "in no branch".into(),
        Some(b) => format!("in the {} of {:?}", branch_key(b.if_branch), b.condition),
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(absent)".to_string(), Value::to_string)
}

/// The parameters `v` reads with `{"Get": "Parameters.X"}`, in order, once.
fn parameters_used(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (1, Some(Value::String(s))) = (m.len(), m.get("Get")) {
                    if let Ok(Reference::Parameter(p)) = expr::parse_get(s) {
                        if !out.contains(&p) {
                            out.push(p);
                        }
                        return;
                    }
                }
                m.values().for_each(|c| walk(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// The Condition that keeps `step` from running when the steps `selected`
/// run and the others are reused: an enclosing Condition (at any depth)
/// that is not selected, so it is reused with its outcome in the source,
/// and that took the other branch there. Worded for people: `on the
/// ElseSteps of condition "Gate", which is reused and took the IfSteps
/// branch in the source execution`.
pub fn held_by_reused_condition(
    def: &Definition,
    step: &Step,
    source: &HashMap<String, SourceStep>,
    selected: &BTreeSet<String>,
) -> Option<String> {
    let mut cur = step;
    while let Some(branch) = &cur.branch {
        let outcome = source
            .get(&branch.condition)
            .filter(|s| s.succeeded())
            .and_then(|s| s.outcome);
        if !selected.contains(&branch.condition) && outcome.is_some_and(|o| o != branch.if_branch) {
            return Some(format!(
                "on the {} of condition {:?}, which is reused and took the {} branch in the source execution",
                branch_key(branch.if_branch),
                branch.condition,
                branch_key(!branch.if_branch)
            ));
        }
        cur = def.step(&branch.condition)?;
    }
    None
}

/// The step without `DisplayName` and `Description`: renaming a step for
/// people does not change what it computes, so it must not re-run it.
///
/// Nor does what only says how it is run: `CacheConfig` (whether and how
/// long its outputs serve the cache), `RetryPolicies` (how often a failure
/// is retried) and `DependsOn` as text (the dependencies are compared as a
/// set, so listing them in another order is no change).
fn cosmetic_free(raw: &Value) -> Value {
    let mut raw = raw.clone();
    if let Some(m) = raw.as_object_mut() {
        for key in [
            "DisplayName",
            "Description",
            "CacheConfig",
            "RetryPolicies",
            "DependsOn",
        ] {
            m.remove(key);
        }
    }
    env_as_text(raw)
}

/// A Command step with its `Env` values as the process sees them: a number
/// or a boolean is the same text as the string of it (`10` and `"10"`), as
/// in the cache key.
fn env_as_text(mut step: Value) -> Value {
    if step.get("Type").and_then(Value::as_str) != Some("Command") {
        return step;
    }
    if let Some(env) = step.pointer_mut("/Arguments/Env").and_then(Value::as_object_mut) {
        for value in env.values_mut() {
            if matches!(value, Value::Number(_) | Value::Bool(_)) {
                *value = Value::String(value.to_string());
            }
        }
    }
    step
}

/// `v` with every `{"Get": "Parameters.X"}` replaced by X's value in
/// `params`; other expressions and unknown parameters are left as written.
pub fn substitute_parameters(v: &Value, params: &Map<String, Value>) -> Value {
    match v {
        Value::Object(m) => {
            if let (1, Some(Value::String(s))) = (m.len(), m.get("Get")) {
                if let Ok(Reference::Parameter(p)) = expr::parse_get(s) {
                    if let Some(value) = params.get(&p) {
                        return value.clone();
                    }
                }
            }
            Value::Object(
                m.iter()
                    .map(|(k, c)| (k.clone(), substitute_parameters(c, params)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|c| substitute_parameters(c, params)).collect()),
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests;
