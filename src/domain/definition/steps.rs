//! Parsing of one step object: common fields, per-type `Arguments`, cache
//! and retry configuration. Cross-step checks (names, references, branches)
//! happen afterwards in `refs`, once every step is known.

use serde_json::{Map, Value};

use super::deps::{parse_depends_on, Dependency};
use super::{callback, cleanup, for_each, supported_types, Branch, CacheConfig, Step, StepKind};
use crate::domain::expr::{self, Found};
use crate::domain::{condition, duration, names, pointer_push, retry, type_name, Issue};

const STEP_KEYS: [&str; 8] = [
    "Name",
    "Type",
    "Arguments",
    "DependsOn",
    "DisplayName",
    "Description",
    "CacheConfig",
    "RetryPolicies",
];

const COMMAND_KEYS: [&str; 6] = [
    "Command",
    "Shell",
    "Env",
    "WorkingDirectory",
    "TimeoutSeconds",
    "CacheInputs",
];

/// A parsed step before cross-step linking.
pub(super) struct Pending {
    pub step: Step,
    /// `None` when the Type was missing or unsupported (already an issue).
    pub kind: Option<StepKind>,
    /// `(name, pointer, trigger)` of each DependsOn entry.
    pub explicit_deps: Vec<Dependency>,
    /// `(name, pointer)` of each step a Cleanup step names.
    pub cleanup_targets: Vec<(String, String)>,
    pub refs: Vec<Found>,
    /// Enclosing Conditions, outermost first: (index in the pending list, in IfSteps?).
    pub branch_path: Vec<(usize, bool)>,
    /// Declared OutputNames of a Callback step.
    pub callback_outputs: Vec<String>,
    /// For a step of a ForEach body: the index of that ForEach in the pending list.
    pub body_of: Option<usize>,
    /// For a ForEach step: the names of its body's steps.
    pub body_names: Vec<String>,
}

/// Parses `list` (a Steps, IfSteps or ElseSteps list at `list_ptr`) into
/// `out`, each Condition immediately followed by its branch steps.
pub(super) fn collect(
    list: &[Value],
    list_ptr: &str,
    branch_path: &[(usize, bool)],
    out: &mut Vec<Pending>,
    issues: &mut Vec<Issue>,
) {
    for (i, v) in list.iter().enumerate() {
        let ptr = pointer_push(list_ptr, i);
        let branch = branch_path.last().map(|&(c, if_branch)| Branch {
            condition: out[c].step.name.clone(),
            if_branch,
        });
        let Some((pending, inner)) = parse_step(v, &ptr, branch, branch_path.to_vec(), issues) else {
            continue;
        };
        let idx = out.len();
        out.push(pending);
        let args_ptr = pointer_push(&ptr, "Arguments");
        match inner {
            Inner::None => {}
            Inner::Branches(if_steps, else_steps) => {
                for (key, list, flag) in [("IfSteps", if_steps, true), ("ElseSteps", else_steps, false)] {
                    let mut inner = branch_path.to_vec();
                    inner.push((idx, flag));
                    collect(list, &pointer_push(&args_ptr, key), &inner, out, issues);
                }
            }
            Inner::Body(body) => collect_body(body, &pointer_push(&args_ptr, "ForEachBody"), idx, out, issues),
        }
    }
}

/// Parses the body of the ForEach at `parent` in the pending list.
fn collect_body(list: &[Value], list_ptr: &str, parent: usize, out: &mut Vec<Pending>, issues: &mut Vec<Issue>) {
    let parent_name = out[parent].step.name.clone();
    for (i, v) in list.iter().enumerate() {
        let ptr = pointer_push(list_ptr, i);
        let Some((mut pending, _)) = parse_step(v, &ptr, None, Vec::new(), issues) else {
            continue;
        };
        if let Some(kind) = pending.kind.filter(|k| !for_each::BODY_KINDS.contains(k)) {
            let allowed: Vec<&str> = for_each::BODY_KINDS.iter().map(|k| k.as_str()).collect();
            issues.push(Issue::new(
                pointer_push(&ptr, "Type"),
                format!(
                    "step {} is a {} step, which a ForEach body cannot hold; allowed in a body: {} \
                     (put a Condition or another ForEach after the ForEach step instead)",
                    pending.step.name,
                    kind.as_str(),
                    allowed.join(", ")
                ),
            ));
            pending.kind = None;
        }
        pending.step.parent = Some(parent_name.clone());
        pending.body_of = Some(parent);
        out[parent].body_names.push(pending.step.name.clone());
        out.push(pending);
    }
}

/// The steps a step holds: a Condition's branches, a ForEach's body.
enum Inner<'a> {
    None,
    Branches(&'a [Value], &'a [Value]),
    Body(&'a [Value]),
}

fn parse_step<'a>(
    v: &'a Value,
    ptr: &str,
    branch: Option<Branch>,
    branch_path: Vec<(usize, bool)>,
    issues: &mut Vec<Issue>,
) -> Option<(Pending, Inner<'a>)> {
    let Some(obj) = v.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!("a step must be an object, got {}", type_name(v)),
        ));
        return None;
    };
    if let Some(pending) = unsupported_type(obj, ptr, &branch, &branch_path, issues) {
        return Some((pending, Inner::None));
    }
    let name_ptr = pointer_push(ptr, "Name");
    let name = match obj.get("Name") {
        Some(Value::String(n)) => {
            if let Err(e) = names::check_step_name(n) {
                issues.push(Issue::new(&name_ptr, e));
            }
            n.clone()
        }
        _ => {
            issues.push(Issue::new(&name_ptr, "a step needs a Name string"));
            String::new()
        }
    };
    let label = if name.is_empty() {
        format!("at {ptr}")
    } else {
        name.clone()
    };
    let kind = match obj.get("Type") {
        Some(Value::String(t)) => StepKind::parse(t),
        _ => {
            issues.push(Issue::new(
                pointer_push(ptr, "Type"),
                format!("step {label} needs a Type, one of: {}", supported_types()),
            ));
            None
        }
    };
    let sdk_callback = kind == Some(StepKind::Callback) && callback::is_sdk_callback(obj);
    check_step_keys(obj, kind, ptr, &label, issues);
    let display_name = opt_string(obj, "DisplayName", ptr, &label, issues);
    let description = opt_string(obj, "Description", ptr, &label, issues);
    let explicit_deps = parse_depends_on(obj.get("DependsOn"), ptr, &label, issues);
    let cache = obj
        .get("CacheConfig")
        // The SDK writes CacheConfig on a CallbackStep too; it is accepted
        // there and ignored (Callback steps are never cached).
        .and_then(|c| {
            let checked = if sdk_callback { None } else { kind };
            parse_cache(c, checked, &pointer_push(ptr, "CacheConfig"), &label, issues)
        });
    let retry_policies = obj
        .get("RetryPolicies")
        .map(|r| retry::parse_retry_policies(r, &pointer_push(ptr, "RetryPolicies"), issues))
        .unwrap_or_default();
    let property_files = match (kind, obj.get("PropertyFiles")) {
        (Some(StepKind::Command), Some(pf)) => {
            parse_property_files(pf, &pointer_push(ptr, "PropertyFiles"), &label, issues)
        }
        _ => Vec::new(),
    };
    let parsed = match kind {
        Some(_) if sdk_callback => {
            let (arguments, refs, callback_outputs) = callback::parse_sdk_callback(obj, ptr, &label, issues);
            Parsed {
                arguments,
                refs,
                inner: Inner::None,
                callback_outputs,
                cleanup_targets: Vec::new(),
                for_each: None,
            }
        }
        Some(k) => parse_arguments(k, obj.get("Arguments"), ptr, &label, issues),
        None => Parsed::default(),
    };
    let mut raw = v.clone();
    if kind == Some(StepKind::Condition) {
        if let Some(args) = raw.get_mut("Arguments").and_then(Value::as_object_mut) {
            args.remove("IfSteps");
            args.remove("ElseSteps");
        }
    }
    let step = Step {
        name,
        kind: kind.unwrap_or(StepKind::Pass),
        arguments: parsed.arguments,
        depends_on: Vec::new(),
        triggers: Vec::new(),
        branch,
        display_name,
        description,
        cache,
        retry_policies,
        property_files,
        pointer: ptr.to_string(),
        raw,
        parent: None,
        for_each: parsed.for_each.map(Box::new),
    };
    if kind == Some(StepKind::ForEach) && !step.retry_policies.is_empty() {
        issues.push(Issue::new(
            pointer_push(ptr, "RetryPolicies"),
            format!("ForEach step {label} is not retried itself; put RetryPolicies on the steps of its ForEachBody"),
        ));
    }
    let pending = Pending {
        step,
        kind,
        explicit_deps,
        refs: parsed.refs,
        branch_path,
        callback_outputs: parsed.callback_outputs,
        cleanup_targets: parsed.cleanup_targets,
        body_of: None,
        body_names: Vec::new(),
    };
    Some((pending, parsed.inner))
}

/// A type stepwise does not run (a SageMaker job: Processing, Training,
/// Lambda, ...) is one issue on its Type and nothing else: its other fields
/// follow that job type's shape, which stepwise does not check. Returns a
/// placeholder known by name only, so references to it are not reported as
/// unknown steps.
fn unsupported_type(
    obj: &Map<String, Value>,
    ptr: &str,
    branch: &Option<Branch>,
    branch_path: &[(usize, bool)],
    issues: &mut Vec<Issue>,
) -> Option<Pending> {
    let t = obj.get("Type")?.as_str().filter(|t| StepKind::parse(t).is_none())?;
    let name = obj.get("Name").and_then(Value::as_str).unwrap_or_default().to_string();
    let label = if name.is_empty() {
        format!("at {ptr}")
    } else {
        name.clone()
    };
    issues.push(Issue::new(
        pointer_push(ptr, "Type"),
        format!(
            "step {label} has type {t:?}, which is not run by stepwise (it runs no SageMaker jobs such \
             as Processing, Training or Lambda); supported types: {}",
            supported_types()
        ),
    ));
    Some(Pending {
        step: Step {
            name,
            kind: StepKind::Pass,
            arguments: Value::Object(Map::new()),
            depends_on: Vec::new(),
            triggers: Vec::new(),
            branch: branch.clone(),
            display_name: None,
            description: None,
            cache: None,
            retry_policies: Vec::new(),
            property_files: Vec::new(),
            pointer: ptr.to_string(),
            raw: Value::Object(obj.clone()),
            parent: None,
            for_each: None,
        },
        kind: None,
        explicit_deps: Vec::new(),
        cleanup_targets: Vec::new(),
        refs: Vec::new(),
        branch_path: branch_path.to_vec(),
        callback_outputs: Vec::new(),
        body_of: None,
        body_names: Vec::new(),
    })
}

/// An issue for each step-level key the step's type does not take.
fn check_step_keys(obj: &Map<String, Value>, kind: Option<StepKind>, ptr: &str, label: &str, issues: &mut Vec<Issue>) {
    for key in obj.keys().filter(|k| !STEP_KEYS.contains(&k.as_str())) {
        match (key.as_str(), kind) {
            ("PropertyFiles", Some(StepKind::Command) | None) => {}
            ("SqsQueueUrl" | "OutputParameters", Some(StepKind::Callback)) => {}
            ("PropertyFiles", Some(k)) => issues.push(Issue::new(
                pointer_push(ptr, key),
                format!(
                    "PropertyFiles is only allowed on Command steps; step {label} is a {}",
                    k.as_str()
                ),
            )),
            _ => issues.push(Issue::new(
                pointer_push(ptr, key),
                format!(
                    "unknown key {key:?} in step {label}; allowed: {}, PropertyFiles (Command only), \
                     SqsQueueUrl and OutputParameters (Callback only)",
                    STEP_KEYS.join(", ")
                ),
            )),
        }
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) => Some(s.clone()),
        other => {
            issues.push(Issue::new(
                pointer_push(ptr, key),
                format!("{key} of step {label} must be a string, got {}", type_name(other)),
            ));
            None
        }
    }
}

fn parse_cache(
    v: &Value,
    kind: Option<StepKind>,
    ptr: &str,
    label: &str,
    issues: &mut Vec<Issue>,
) -> Option<CacheConfig> {
    let Some(obj) = v.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!("CacheConfig of step {label} must be an object"),
        ));
        return None;
    };
    for key in obj.keys().filter(|k| *k != "Enabled" && *k != "ExpireAfter") {
        issues.push(Issue::new(
            pointer_push(ptr, key),
            format!("unknown key {key:?} in CacheConfig of step {label}; allowed: Enabled, ExpireAfter"),
        ));
    }
    let enabled = match obj.get("Enabled") {
        Some(Value::Bool(b)) => *b,
        _ => {
            issues.push(Issue::new(
                pointer_push(ptr, "Enabled"),
                format!("CacheConfig of step {label} needs Enabled, a boolean"),
            ));
            false
        }
    };
    let expire_after = match obj.get("ExpireAfter") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match duration::parse_expire_after(s) {
            Ok(d) => Some(d),
            Err(e) => {
                issues.push(Issue::new(
                    pointer_push(ptr, "ExpireAfter"),
                    format!("step {label}: {e}"),
                ));
                None
            }
        },
        Some(other) => {
            issues.push(Issue::new(
                pointer_push(ptr, "ExpireAfter"),
                format!("ExpireAfter of step {label} must be a duration string such as \"P30D\", got {other}"),
            ));
            None
        }
    };
    if let Some(k) = kind.filter(|k| enabled && !k.is_cacheable()) {
        issues.push(Issue::new(
            pointer_push(ptr, "Enabled"),
            format!(
                "step {label}: {} steps are never cached; remove CacheConfig or set Enabled to false",
                k.as_str()
            ),
        ));
    }
    Some(CacheConfig { enabled, expire_after })
}

/// A file path inside a step's artifacts: relative and not escaping them.
pub(super) fn check_artifact_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the file path is empty".into());
    }
    if path.starts_with('/') || path.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!(
            "file path {path:?} must be relative to the step's artifacts, without \"..\""
        ));
    }
    Ok(())
}

fn parse_property_files(v: &Value, ptr: &str, label: &str, issues: &mut Vec<Issue>) -> Vec<(String, String)> {
    let Some(list) = v.as_array() else {
        issues.push(Issue::new(ptr, format!("PropertyFiles of step {label} must be a list")));
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let ptr = pointer_push(ptr, i);
        let Some(obj) = item.as_object() else {
            issues.push(Issue::new(
                &ptr,
                format!("a property file of step {label} must be an object"),
            ));
            continue;
        };
        for key in obj
            .keys()
            .filter(|k| !["PropertyFileName", "FilePath", "OutputName"].contains(&k.as_str()))
        {
            issues.push(Issue::new(
                pointer_push(&ptr, key),
                format!("unknown key {key:?} in a property file of step {label}; allowed: PropertyFileName, FilePath, OutputName"),
            ));
        }
        let name = obj
            .get("PropertyFileName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let file = obj.get("FilePath").and_then(Value::as_str);
        match name {
            None => issues.push(Issue::new(
                pointer_push(&ptr, "PropertyFileName"),
                format!("a property file of step {label} needs PropertyFileName, a non-empty string"),
            )),
            Some(n) if out.iter().any(|(o, _)| o == n) => issues.push(Issue::new(
                pointer_push(&ptr, "PropertyFileName"),
                format!("duplicate property file name {n} in step {label}"),
            )),
            _ => {}
        }
        let file_ok = match file {
            None => {
                issues.push(Issue::new(
                    pointer_push(&ptr, "FilePath"),
                    format!("a property file of step {label} needs FilePath, a string"),
                ));
                false
            }
            Some(f) => check_artifact_path(f)
                .map_err(|e| issues.push(Issue::new(pointer_push(&ptr, "FilePath"), format!("step {label}: {e}"))))
                .is_ok(),
        };
        if let (Some(n), Some(f), true) = (name, file, file_ok) {
            if !out.iter().any(|(o, _)| o == n) {
                out.push((n.to_string(), f.to_string()));
            }
        }
        if let Some(o) = obj.get("OutputName").filter(|o| !o.is_string()) {
            issues.push(Issue::new(
                pointer_push(&ptr, "OutputName"),
                format!(
                    "OutputName of a property file of step {label} must be a string, got {}",
                    type_name(o)
                ),
            ));
        }
    }
    out
}

struct Parsed<'a> {
    arguments: Value,
    refs: Vec<Found>,
    inner: Inner<'a>,
    callback_outputs: Vec<String>,
    cleanup_targets: Vec<(String, String)>,
    for_each: Option<for_each::ForEachSpec>,
}

impl Default for Parsed<'_> {
    fn default() -> Self {
        Parsed {
            arguments: Value::Null,
            refs: Vec::new(),
            inner: Inner::None,
            callback_outputs: Vec::new(),
            cleanup_targets: Vec::new(),
            for_each: None,
        }
    }
}

fn parse_arguments<'a>(
    kind: StepKind,
    args: Option<&'a Value>,
    step_ptr: &str,
    label: &str,
    issues: &mut Vec<Issue>,
) -> Parsed<'a> {
    let ptr = pointer_push(step_ptr, "Arguments");
    let empty = || Parsed {
        arguments: Value::Object(Map::new()),
        ..Parsed::default()
    };
    let obj = match args {
        Some(Value::Object(m)) => m,
        None if !matches!(
            kind,
            StepKind::Command | StepKind::Condition | StepKind::ForEach | StepKind::Cleanup
        ) =>
        {
            return empty()
        }
        None => {
            let needs = match kind {
                StepKind::Command => "Command or Shell",
                StepKind::ForEach => "IterableItems, MaxConcurrency and ForEachBody",
                StepKind::Cleanup => "Resources",
                _ => "Conditions",
            };
            issues.push(Issue::new(
                ptr,
                format!("{} step {label} needs Arguments with {needs}", kind.as_str()),
            ));
            return empty();
        }
        Some(other) => {
            issues.push(Issue::new(
                ptr,
                format!("Arguments of step {label} must be an object, got {}", type_name(other)),
            ));
            return empty();
        }
    };
    let args = args.expect("matched Some above");
    let mut parsed = Parsed {
        arguments: args.clone(),
        ..Parsed::default()
    };
    match kind {
        StepKind::Command => check_command(obj, &ptr, label, issues),
        StepKind::Pass => {}
        StepKind::Cleanup => parsed.cleanup_targets = cleanup::check_cleanup(obj, &ptr, label, issues),
        StepKind::Fail => {
            unknown_keys(obj, &["ErrorMessage"], &ptr, label, issues);
            if let Some(m) = obj.get("ErrorMessage").filter(|m| !is_string_like(m)) {
                issues.push(Issue::new(
                    pointer_push(&ptr, "ErrorMessage"),
                    format!(
                        "ErrorMessage of step {label} must be a string or an expression, got {}",
                        type_name(m)
                    ),
                ));
            }
        }
        StepKind::Callback => parsed.callback_outputs = callback::check_callback(obj, &ptr, label, issues),
        StepKind::ForEach => {
            let f = for_each::parse(obj, &ptr, label, issues);
            parsed.arguments = f.arguments;
            parsed.refs = f.refs;
            parsed.inner = Inner::Body(f.body);
            parsed.for_each = Some(f.spec);
            return parsed;
        }
        StepKind::Condition => {
            unknown_keys(obj, &["Conditions", "IfSteps", "ElseSteps"], &ptr, label, issues);
            let cond_ptr = pointer_push(&ptr, "Conditions");
            let conditions = match obj.get("Conditions") {
                Some(Value::Array(list)) if !list.is_empty() => {
                    for (i, c) in list.iter().enumerate() {
                        condition::check_condition_shape(c, &pointer_push(&cond_ptr, i), issues);
                    }
                    Value::Array(list.clone())
                }
                _ => {
                    issues.push(Issue::new(
                        &cond_ptr,
                        format!("Condition step {label} needs Conditions, a non-empty list"),
                    ));
                    Value::Array(Vec::new())
                }
            };
            let branch = |key: &str, issues: &mut Vec<Issue>| -> &'a [Value] {
                match obj.get(key) {
                    None | Some(Value::Null) => &[],
                    Some(Value::Array(list)) => list,
                    Some(other) => {
                        issues.push(Issue::new(
                            pointer_push(&ptr, key),
                            format!(
                                "{key} of step {label} must be a list of steps, got {}",
                                type_name(other)
                            ),
                        ));
                        &[]
                    }
                }
            };
            parsed.inner = Inner::Branches(branch("IfSteps", issues), branch("ElseSteps", issues));
            // Branch steps are steps of their own; only Conditions belong to this one.
            parsed.refs = expr::find_references(&conditions, &cond_ptr, issues);
            let mut only = Map::new();
            only.insert("Conditions".into(), conditions);
            parsed.arguments = Value::Object(only);
            return parsed;
        }
    }
    parsed.refs = expr::find_references(args, &ptr, issues);
    parsed
}

pub(super) fn unknown_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    ptr: &str,
    label: &str,
    issues: &mut Vec<Issue>,
) {
    for key in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(ptr, key),
            format!(
                "unknown argument {key:?} in step {label}; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
}

fn is_string_like(v: &Value) -> bool {
    v.is_string() || expr::is_expression(v)
}

/// The longest `TimeoutSeconds` a definition may give: ten years. Longer
/// ones would overflow the deadline the database stores (a timestamp) and
/// fail only at run time.
pub const MAX_TIMEOUT_SECONDS: u64 = 315_360_000;

pub(super) fn check_positive_int(obj: &Map<String, Value>, key: &str, ptr: &str, label: &str, issues: &mut Vec<Issue>) {
    if let Some(v) = obj.get(key) {
        if !(v.as_u64().is_some_and(|n| n > 0 && n <= MAX_TIMEOUT_SECONDS) || expr::is_expression(v)) {
            issues.push(Issue::new(
                pointer_push(ptr, key),
                format!("{key} of step {label} must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS} (ten years), got {v}"),
            ));
        }
    }
}

fn check_command(obj: &Map<String, Value>, ptr: &str, label: &str, issues: &mut Vec<Issue>) {
    unknown_keys(obj, &COMMAND_KEYS, ptr, label, issues);
    match (obj.get("Command"), obj.get("Shell")) {
        (Some(_), Some(_)) => issues.push(Issue::new(
            ptr,
            format!("Command step {label} takes Command or Shell, not both"),
        )),
        (None, None) => issues.push(Issue::new(
            ptr,
            format!("Command step {label} needs Command (an argv list) or Shell (a string)"),
        )),
        _ => {}
    }
    let string_list = |key: &str, non_empty: bool, issues: &mut Vec<Issue>| {
        let Some(v) = obj.get(key) else { return };
        let list_ptr = pointer_push(ptr, key);
        match v {
            Value::Array(items) if !(non_empty && items.is_empty()) => {
                for (i, item) in items.iter().enumerate().filter(|(_, it)| !is_string_like(it)) {
                    issues.push(Issue::new(
                        pointer_push(&list_ptr, i),
                        format!(
                            "{key}[{i}] of step {label} must be a string or an expression, got {}",
                            type_name(item)
                        ),
                    ));
                }
            }
            _ => issues.push(Issue::new(
                list_ptr,
                format!(
                    "{key} of step {label} must be a {}list of strings",
                    if non_empty { "non-empty " } else { "" }
                ),
            )),
        }
    };
    string_list("Command", true, issues);
    string_list("CacheInputs", false, issues);
    for key in ["Shell", "WorkingDirectory"] {
        if let Some(v) = obj.get(key).filter(|v| !is_string_like(v)) {
            issues.push(Issue::new(
                pointer_push(ptr, key),
                format!(
                    "{key} of step {label} must be a string or an expression, got {}",
                    type_name(v)
                ),
            ));
        }
    }
    check_positive_int(obj, "TimeoutSeconds", ptr, label, issues);
    match obj.get("Env") {
        None => {}
        Some(Value::Object(env)) => {
            let env_ptr = pointer_push(ptr, "Env");
            for (k, v) in env {
                if k.is_empty() || k.contains(['=', '\0']) {
                    issues.push(Issue::new(
                        pointer_push(&env_ptr, k),
                        format!("Env of step {label} has an invalid variable name {k:?}"),
                    ));
                }
                let ok = matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) || expr::is_expression(v);
                if !ok {
                    issues.push(Issue::new(
                        pointer_push(&env_ptr, k),
                        format!(
                            "Env {k} of step {label} must be a string, number, boolean or expression, got {}",
                            type_name(v)
                        ),
                    ));
                }
            }
        }
        Some(other) => issues.push(Issue::new(
            pointer_push(ptr, "Env"),
            format!("Env of step {label} must be an object, got {}", type_name(other)),
        )),
    }
}
