//! Expressions inside `Arguments` (SPEC 2.4): `Get` references, `Std:Join`
//! and `Std:JsonGet`. Static analysis (`find_references`) serves definition
//! validation and dependency discovery; `evaluate` substitutes real values at
//! run time through a [`Resolver`], so this module never touches storage.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{pointer_push, type_name, Issue};

/// The keys that make a single-key object an expression.
pub const EXPRESSION_KEYS: [&str; 3] = ["Get", "Std:Join", "Std:JsonGet"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Renders a path the way it would be written after a step name:
/// `.Outputs['a b'][0]`.
pub fn format_path(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSegment::Key(k) if !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') => {
                out.push('.');
                out.push_str(k);
            }
            PathSegment::Key(k) if !k.contains('"') => out.push_str(&format!("[\"{k}\"]")),
            PathSegment::Key(k) => out.push_str(&format!("['{k}']")),
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecutionVar {
    PipelineExecutionId,
    PipelineExecutionArn,
    PipelineName,
    PipelineArn,
    StartDateTime,
    CurrentDateTime,
}

impl ExecutionVar {
    pub const ALL: [ExecutionVar; 6] = [
        ExecutionVar::PipelineExecutionId,
        ExecutionVar::PipelineExecutionArn,
        ExecutionVar::PipelineName,
        ExecutionVar::PipelineArn,
        ExecutionVar::StartDateTime,
        ExecutionVar::CurrentDateTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionVar::PipelineExecutionId => "PipelineExecutionId",
            ExecutionVar::PipelineExecutionArn => "PipelineExecutionArn",
            ExecutionVar::PipelineName => "PipelineName",
            ExecutionVar::PipelineArn => "PipelineArn",
            ExecutionVar::StartDateTime => "StartDateTime",
            ExecutionVar::CurrentDateTime => "CurrentDateTime",
        }
    }

    pub fn parse(s: &str) -> Option<ExecutionVar> {
        ExecutionVar::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the value differs between executions, so a cache key that
    /// contains it can never hit.
    pub fn is_per_execution(self) -> bool {
        !matches!(self, ExecutionVar::PipelineName | ExecutionVar::PipelineArn)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reference {
    Parameter(String),
    Execution(ExecutionVar),
    Step {
        step: String,
        path: Vec<PathSegment>,
    },
    /// A named secret (`Secrets.NAME`), allowed only as a Command's Env value.
    Secret(String),
    /// `ForEach.CurrentItem<path>`: the item of the iteration a ForEach body
    /// step runs in (a string holding a JSON object or list is drilled into).
    CurrentItem(Vec<PathSegment>),
    /// `ForEach.CurrentIndex`: that item's index in the list, from 0.
    CurrentIndex,
    /// `IterationOutput.<BodyStep><path>`: in a ForEach's `Selector`, the
    /// property document of one body step of each iteration.
    IterationOutput {
        step: String,
        path: Vec<PathSegment>,
    },
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Parameter(p) => write!(f, "Parameters.{p}"),
            Reference::Execution(v) => write!(f, "Execution.{}", v.as_str()),
            Reference::Step { step, path } => write!(f, "Steps.{step}{}", format_path(path)),
            Reference::Secret(name) => write!(f, "Secrets.{name}"),
            Reference::CurrentItem(path) => write!(f, "ForEach.CurrentItem{}", format_path(path)),
            Reference::CurrentIndex => write!(f, "ForEach.CurrentIndex"),
            Reference::IterationOutput { step, path } => write!(f, "IterationOutput.{step}{}", format_path(path)),
        }
    }
}

/// Parses the string of a `{"Get": ...}`: `Parameters.P`, `Execution.V`,
/// `Secrets.NAME` or `Steps.S<path>` where the path uses `.key`, `['key']`,
/// `["key"]` and `[0]`.
pub fn parse_get(s: &str) -> Result<Reference, String> {
    let Some((root, rest)) = s.split_once('.') else {
        return Err(format!(
            "malformed reference {s:?}: expected Parameters.<name>, Execution.<variable> or Steps.<step>.<property>"
        ));
    };
    match root {
        "Parameters" => {
            if rest.is_empty() || rest.contains(['.', '[', ']']) {
                return Err(format!(
                    "malformed reference {s:?}: Parameters.<name> takes a parameter name and no path"
                ));
            }
            Ok(Reference::Parameter(rest.to_string()))
        }
        "Secrets" => {
            super::names::check_secret_name(rest).map_err(|e| format!("malformed reference {s:?}: {e}"))?;
            Ok(Reference::Secret(rest.to_string()))
        }
        "Execution" => ExecutionVar::parse(rest).map(Reference::Execution).ok_or_else(|| {
            let all: Vec<_> = ExecutionVar::ALL.iter().map(|v| v.as_str()).collect();
            format!(
                "unknown execution variable {rest:?} in {s:?}; supported: {}",
                all.join(", ")
            )
        }),
        "Steps" => {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("malformed reference {s:?}: missing step name after \"Steps.\""));
            }
            let start = "Steps.".len() + end;
            Ok(Reference::Step {
                step: rest[..end].to_string(),
                path: parse_segments(s, start, false)?,
            })
        }
        "ForEach" if rest == "CurrentIndex" => Ok(Reference::CurrentIndex),
        "ForEach" if rest.starts_with("CurrentItem") => {
            let tail = &rest["CurrentItem".len()..];
            if !(tail.is_empty() || tail.starts_with(['.', '['])) {
                return Err(format!(
                    "malformed reference {s:?}: expected ForEach.CurrentItem or ForEach.CurrentIndex"
                ));
            }
            Ok(Reference::CurrentItem(parse_segments(
                s,
                "ForEach.CurrentItem".len(),
                false,
            )?))
        }
        "ForEach" => Err(format!(
            "malformed reference {s:?}: inside a ForEach body use ForEach.CurrentItem (with an optional path) \
             or ForEach.CurrentIndex"
        )),
        "IterationOutput" => {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 {
                return Err(format!(
                    "malformed reference {s:?}: missing body step name after \"IterationOutput.\""
                ));
            }
            Ok(Reference::IterationOutput {
                step: rest[..end].to_string(),
                path: parse_segments(s, "IterationOutput.".len() + end, false)?,
            })
        }
        _ => Err(format!(
            "malformed reference {s:?}: it must start with Parameters., Execution., Secrets., Steps. or \
             (inside a ForEach body) ForEach."
        )),
    }
}

/// Parses a `Std:JsonGet` `Path` such as `metrics.accuracy.value` or `a.b[0]`
/// (the first key has no leading dot).
pub fn parse_json_path(s: &str) -> Result<Vec<PathSegment>, String> {
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    parse_segments(s, 0, true)
}

/// Parses path segments of `full` from byte `start`. Stops only at ASCII
/// delimiters, so every slice lands on a UTF-8 boundary.
fn parse_segments(full: &str, start: usize, bare_first: bool) -> Result<Vec<PathSegment>, String> {
    let b = full.as_bytes();
    let err = |at: usize, why: &str| {
        let col = full[..at.min(full.len())].chars().count() + 1;
        format!("malformed path in {full:?} at character {col}: {why}")
    };
    let read_key = |from: usize| {
        let len = b[from..]
            .iter()
            .position(|c| matches!(c, b'.' | b'[' | b']'))
            .unwrap_or(b.len() - from);
        (full[from..from + len].to_string(), from + len)
    };
    let mut out = Vec::new();
    let mut i = start;
    if bare_first && b.get(i) != Some(&b'[') {
        let (key, next) = read_key(i);
        if key.is_empty() {
            return Err(err(i, "expected a key"));
        }
        out.push(PathSegment::Key(key));
        i = next;
    }
    while i < b.len() {
        match b[i] {
            b'.' => {
                let (key, next) = read_key(i + 1);
                if key.is_empty() {
                    return Err(err(i + 1, "expected a key after '.'"));
                }
                out.push(PathSegment::Key(key));
                i = next;
            }
            b'[' => {
                let open = i;
                i += 1;
                match b.get(i) {
                    Some(&q) if q == b'\'' || q == b'"' => {
                        let close = full[i + 1..]
                            .find(q as char)
                            .map(|p| i + 1 + p)
                            .ok_or_else(|| err(open, "unterminated quoted key"))?;
                        if b.get(close + 1) != Some(&b']') {
                            return Err(err(close + 1, "expected ']' after the quoted key"));
                        }
                        out.push(PathSegment::Key(full[i + 1..close].to_string()));
                        i = close + 2;
                    }
                    _ => {
                        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                        if digits == 0 {
                            return Err(err(i, "expected an index or a quoted key inside [ ]"));
                        }
                        if b.get(i + digits) != Some(&b']') {
                            return Err(err(i + digits, "expected ']'"));
                        }
                        let index = full[i..i + digits].parse().map_err(|_| err(i, "index too large"))?;
                        out.push(PathSegment::Index(index));
                        i += digits + 1;
                    }
                }
            }
            c => return Err(err(i, &format!("expected '.' or '[', found {:?}", c as char))),
        }
    }
    Ok(out)
}

/// Whether `v` is an expression: an object with exactly one key, one of
/// `Get`, `Std:Join`, `Std:JsonGet`.
pub fn is_expression(v: &Value) -> bool {
    match v {
        Value::Object(m) if m.len() == 1 => m.keys().all(|k| EXPRESSION_KEYS.contains(&k.as_str())),
        _ => false,
    }
}

/// A reference found by static analysis. `pointer` is the JSON pointer of the
/// expression object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Get {
        pointer: String,
        reference: Reference,
    },
    /// stepwise's form `{"Std:JsonGet": {"Step", "File", "Path"}}`.
    JsonGet {
        pointer: String,
        step: String,
        file: String,
        path: Vec<PathSegment>,
    },
    /// SageMaker's form `{"Std:JsonGet": {"PropertyFile": {"Get":
    /// "Steps.S.PropertyFiles.NAME"}, "Path"}}`. Only the definition knows
    /// which file `NAME` denotes, so it is resolved (and rewritten into the
    /// `JsonGet` form) there.
    PropertyFileGet {
        pointer: String,
        step: String,
        property_file: String,
        path: Vec<PathSegment>,
    },
}

impl Found {
    pub fn pointer(&self) -> &str {
        match self {
            Found::Get { pointer, .. } | Found::JsonGet { pointer, .. } | Found::PropertyFileGet { pointer, .. } => {
                pointer
            }
        }
    }

    /// The step this reference reads from, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Found::Get {
                reference: Reference::Step { step, .. },
                ..
            }
            | Found::JsonGet { step, .. }
            | Found::PropertyFileGet { step, .. } => Some(step),
            Found::Get { .. } => None,
        }
    }
}

/// Walks any JSON value and returns every well-formed reference in it;
/// malformed expressions are recorded in `issues`. `base_pointer` is the
/// pointer of `v` in the checked document.
pub fn find_references(v: &Value, base_pointer: &str, issues: &mut Vec<Issue>) -> Vec<Found> {
    let mut out = Vec::new();
    walk(v, base_pointer, &mut out, issues);
    out
}

fn walk(v: &Value, ptr: &str, out: &mut Vec<Found>, issues: &mut Vec<Issue>) {
    match v {
        Value::Object(m) if is_expression(v) => {
            let (key, body) = m.iter().next().expect("an expression has one key");
            match key.as_str() {
                "Get" => match body.as_str().map(parse_get) {
                    Some(Ok(reference)) => out.push(Found::Get {
                        pointer: ptr.to_string(),
                        reference,
                    }),
                    Some(Err(e)) => issues.push(Issue::new(ptr, e)),
                    None => issues.push(Issue::new(
                        ptr,
                        format!("Get takes a reference string, got {}", type_name(body)),
                    )),
                },
                "Std:Join" => walk_join(body, &pointer_push(ptr, key), out, issues),
                _ => walk_json_get(body, ptr, &pointer_push(ptr, key), out, issues),
            }
        }
        Value::Object(m) => {
            for (k, c) in m {
                walk(c, &pointer_push(ptr, k), out, issues);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                walk(c, &pointer_push(ptr, i), out, issues);
            }
        }
        _ => {}
    }
}

fn unknown_keys(m: &Map<String, Value>, allowed: &[&str], what: &str, ptr: &str, issues: &mut Vec<Issue>) {
    for k in m.keys().filter(|k| !allowed.contains(&k.as_str())) {
        issues.push(Issue::new(
            pointer_push(ptr, k),
            format!("unknown {what} key {k:?}; allowed: {}", allowed.join(", ")),
        ));
    }
}

fn walk_join(body: &Value, ptr: &str, out: &mut Vec<Found>, issues: &mut Vec<Issue>) {
    let Some(m) = body.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!(
                "Std:Join takes an object {{\"On\", \"Values\"}}, got {}",
                type_name(body)
            ),
        ));
        return;
    };
    unknown_keys(m, &["On", "Values"], "Std:Join", ptr, issues);
    if !m.get("On").is_some_and(Value::is_string) {
        issues.push(Issue::new(
            pointer_push(ptr, "On"),
            "Std:Join needs \"On\", a separator string",
        ));
    }
    match m.get("Values") {
        Some(Value::Array(values)) => {
            let values_ptr = pointer_push(ptr, "Values");
            for (i, v) in values.iter().enumerate() {
                walk(v, &pointer_push(&values_ptr, i), out, issues);
            }
        }
        _ => issues.push(Issue::new(
            pointer_push(ptr, "Values"),
            "Std:Join needs \"Values\", a list",
        )),
    }
}

fn walk_json_get(body: &Value, expr_ptr: &str, ptr: &str, out: &mut Vec<Found>, issues: &mut Vec<Issue>) {
    let Some(m) = body.as_object() else {
        issues.push(Issue::new(
            ptr,
            format!("Std:JsonGet takes an object, got {}", type_name(body)),
        ));
        return;
    };
    if m.contains_key("S3Uri") {
        issues.push(Issue::new(
            pointer_push(ptr, "S3Uri"),
            "Std:JsonGet with S3Uri (reading a JSON file from S3) is not supported; read a file a Command \
             step wrote with {\"Step\", \"File\", \"Path\"} or its PropertyFile",
        ));
        return;
    }
    let before = issues.len();
    let string = |key: &str, issues: &mut Vec<Issue>| match m.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => {
            issues.push(Issue::new(
                pointer_push(ptr, key),
                format!("Std:JsonGet needs \"{key}\", a string"),
            ));
            None
        }
    };
    let path = string("Path", issues).and_then(|p| match parse_json_path(&p) {
        Ok(path) => Some(path),
        Err(e) => {
            issues.push(Issue::new(
                pointer_push(ptr, "Path"),
                format!("Std:JsonGet Path {p:?}: {e}"),
            ));
            None
        }
    });
    if m.contains_key("PropertyFile") {
        unknown_keys(m, &["PropertyFile", "Path"], "Std:JsonGet", ptr, issues);
        let pf = m.get("PropertyFile").and_then(|p| p.get("Get")).and_then(Value::as_str);
        let parsed = match pf.map(parse_get) {
            Some(Ok(Reference::Step { step, path })) => match path.as_slice() {
                [PathSegment::Key(k), PathSegment::Key(name)] if k == "PropertyFiles" => Some((step, name.clone())),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            issues.push(Issue::new(
                pointer_push(ptr, "PropertyFile"),
                format!(
                    "PropertyFile must be {{\"Get\": \"Steps.<step>.PropertyFiles.<name>\"}}, got {}",
                    m.get("PropertyFile").map(Value::to_string).unwrap_or_default()
                ),
            ));
        }
        if let (Some((step, property_file)), Some(path), true) = (parsed, path, issues.len() == before) {
            out.push(Found::PropertyFileGet {
                pointer: expr_ptr.to_string(),
                step,
                property_file,
                path,
            });
        }
    } else {
        unknown_keys(m, &["Step", "File", "Path"], "Std:JsonGet", ptr, issues);
        let step = string("Step", issues);
        let file = string("File", issues);
        if let (Some(step), Some(file), Some(path), true) = (step, file, path, issues.len() == before) {
            out.push(Found::JsonGet {
                pointer: expr_ptr.to_string(),
                step,
                file,
                path,
            });
        }
    }
}

/// What `evaluate` needs from the running execution.
pub trait Resolver {
    /// The effective value of a parameter.
    fn parameter(&self, name: &str) -> Option<Value>;
    fn execution_var(&self, var: ExecutionVar) -> Value;
    /// The property document of a step that has succeeded (or was reused).
    fn step_properties(&self, step: &str) -> Option<Value>;
    /// A JSON file from a step's artifacts.
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String>;
    /// What stands for a secret in resolved arguments: never its value, but
    /// a marker (`domain::secrets::marker`) that the process environment
    /// alone replaces with the value.
    fn secret(&self, name: &str) -> Result<Value, String>;
    /// The item and index of the ForEach iteration being run, if any.
    fn current_item(&self) -> Option<(Value, usize)> {
        None
    }
}

/// Replaces every expression in `v` with its value.
pub fn evaluate(v: &Value, r: &dyn Resolver) -> Result<Value, String> {
    match v {
        Value::Object(m) if is_expression(v) => {
            let (key, body) = m.iter().next().expect("an expression has one key");
            match key.as_str() {
                "Get" => eval_get(body, r),
                "Std:Join" => eval_join(body, r),
                _ => eval_json_get(body, r),
            }
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, c)| Ok((k.clone(), evaluate(c, r)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(a) => a
            .iter()
            .map(|c| evaluate(c, r))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Ok(v.clone()),
    }
}

fn eval_get(body: &Value, r: &dyn Resolver) -> Result<Value, String> {
    let s = body
        .as_str()
        .ok_or_else(|| format!("Get takes a reference string, got {body}"))?;
    match parse_get(s)? {
        Reference::Parameter(p) => r.parameter(&p).ok_or_else(|| format!("{s}: unknown parameter {p}")),
        Reference::Execution(var) => Ok(r.execution_var(var)),
        Reference::Step { step, path } => {
            let props = r
                .step_properties(&step)
                .ok_or_else(|| format!("{s}: step {step} has no properties (it has not succeeded)"))?;
            lookup(&props, &path).map_err(|e| format!("{s}: {e}"))
        }
        Reference::Secret(name) => r.secret(&name),
        Reference::CurrentItem(path) => {
            let (item, _) = r
                .current_item()
                .ok_or_else(|| format!("{s}: only a step inside a ForEach body has a current item"))?;
            lookup(&drillable(item, &path), &path).map_err(|e| format!("{s}: {e}"))
        }
        Reference::CurrentIndex => r
            .current_item()
            .map(|(_, index)| Value::from(index))
            .ok_or_else(|| format!("{s}: only a step inside a ForEach body has a current index")),
        Reference::IterationOutput { .. } => Err(format!("{s}: IterationOutput is read only by a ForEach Selector")),
    }
}

/// An item to read a path in: a string that holds a JSON object or list is
/// read as that document (SageMaker's items are often JSON-object strings).
pub fn drillable(item: Value, path: &[PathSegment]) -> Value {
    match item {
        Value::String(text) if !path.is_empty() => match serde_json::from_str::<Value>(&text) {
            Ok(doc @ (Value::Object(_) | Value::Array(_))) => doc,
            _ => Value::String(text),
        },
        other => other,
    }
}

fn eval_join(body: &Value, r: &dyn Resolver) -> Result<Value, String> {
    let on = body
        .get("On")
        .and_then(Value::as_str)
        .ok_or("Std:Join needs \"On\", a separator string")?;
    let values = body
        .get("Values")
        .and_then(Value::as_array)
        .ok_or("Std:Join needs \"Values\", a list")?;
    let parts = values
        .iter()
        .map(|v| evaluate(v, r).map(|v| stringify(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::String(parts.join(on)))
}

/// Strings as they are, everything else as its JSON text.
pub fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn eval_json_get(body: &Value, r: &dyn Resolver) -> Result<Value, String> {
    let field = |k: &str| body.get(k).and_then(Value::as_str);
    let (Some(step), Some(file), Some(p)) = (field("Step"), field("File"), field("Path")) else {
        return Err(format!(
            "Std:JsonGet needs \"Step\", \"File\" and \"Path\" strings at run time, got {body}"
        ));
    };
    let path = parse_json_path(p).map_err(|e| format!("Std:JsonGet Path {p:?}: {e}"))?;
    let doc = r
        .artifact_json(step, file)
        .map_err(|e| format!("Std:JsonGet {file} of step {step}: {e}"))?;
    lookup(&doc, &path).map_err(|e| format!("Std:JsonGet {file} of step {step}, path {p}: {e}"))
}

/// The value at `path` inside `v`.
pub fn lookup(v: &Value, path: &[PathSegment]) -> Result<Value, String> {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (PathSegment::Key(k), Value::Object(m)) => m.get(k).ok_or_else(|| format!("key {k:?} not found"))?,
            (PathSegment::Index(i), Value::Array(a)) => a
                .get(*i)
                .ok_or_else(|| format!("index {i} out of range (length {})", a.len()))?,
            (PathSegment::Key(k), other) => return Err(format!("cannot read key {k:?} of a {}", type_name(other))),
            (PathSegment::Index(i), other) => return Err(format!("cannot read index {i} of a {}", type_name(other))),
        };
    }
    Ok(cur.clone())
}

/// The `Get` references in `v` to execution variables whose value differs per
/// execution (`Execution.PipelineExecutionId` etc.), deduplicated, in order of
/// appearance. A cache key containing one can never hit.
pub fn uses_per_execution_value(v: &Value) -> Vec<String> {
    fn go(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (true, Some(Value::String(s))) = (m.len() == 1, m.get("Get")) {
                    if let Ok(Reference::Execution(var)) = parse_get(s) {
                        if var.is_per_execution() && !out.contains(s) {
                            out.push(s.clone());
                        }
                    }
                }
                m.values().for_each(|c| go(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| go(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(v, &mut out);
    out
}

#[cfg(test)]
mod tests;
