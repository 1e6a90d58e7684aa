//! Step cache keys (SPEC 4): the canonical document of a step run's key
//! attributes, its SHA-256, warnings about components that can never repeat,
//! and the explanation of a miss against an earlier entry. Pure: the content
//! hashes of `CacheInputs` are computed by `content::inputs`, lookups,
//! expiry and storage of entries belong to the store.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::definition::StepKind;
use super::expr::{self, PathSegment};

/// The Command arguments that enter the key. `TimeoutSeconds` does not: how
/// long a run may take does not change what it produces.
const COMMAND_KEY_FIELDS: [&str; 4] = ["Command", "Shell", "Env", "WorkingDirectory"];
/// How many differences a miss explanation lists before summarising the rest.
const DIFFERENCES_SHOWN: usize = 10;
/// Longest rendering of a value in a miss explanation.
const VALUE_CHARS_SHOWN: usize = 80;

/// A start's `cache_mode` (SPEC 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Use,
    Refresh,
    Off,
}

impl CacheMode {
    pub const ALL: [CacheMode; 3] = [CacheMode::Use, CacheMode::Refresh, CacheMode::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Use => "use",
            CacheMode::Refresh => "refresh",
            CacheMode::Off => "off",
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "use" => Ok(CacheMode::Use),
            "refresh" => Ok(CacheMode::Refresh),
            "off" => Ok(CacheMode::Off),
            other => Err(format!("unknown cache_mode {other:?}: expected use, refresh or off")),
        }
    }
}

/// Read by hand so that a wrong value is told the accepted names: serde's
/// derived enum answers a number with a bare syntax error.
impl<'de> serde::Deserialize<'de> for CacheMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = CacheMode;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                let names: Vec<String> = CacheMode::ALL.iter().map(|m| format!("{:?}", m.as_str())).collect();
                write!(f, "one of {}", names.join(", "))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CacheMode, E> {
                CacheMode::ALL
                    .into_iter()
                    .find(|mode| mode.as_str() == v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(Names)
    }
}

/// What the cache does for a step that runs, as its run reports it
/// (`cache.status`, SPEC 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The step is not cached (no enabled `CacheConfig`, or a type that is
    /// never cached).
    Uncached,
    /// `cache_mode: "off"`: reported `disabled`; it writes no entry.
    Disabled,
    /// `cache_mode: "refresh"`, or a selected step not asked to look up:
    /// reported `bypassed`; it runs and writes an entry.
    Bypassed,
    /// It looks for a usable entry with its key: `hit` or `miss`.
    LookUp,
}

/// The one cache-lookup rule, followed by the plan and by the worker that
/// claims a step. `selected`: the step is a selected step of a selective
/// execution, or an iteration of a selected ForEach (SPEC 9); such a step
/// looks up only when the request said `cache_mode: "use"` (SPEC 5 rule 7),
/// which `asked_to_use` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    pub mode: CacheMode,
    pub selected: bool,
    pub asked_to_use: bool,
}

impl CacheRule {
    /// The rule of the steps that run in a start that gave `mode` (`None`
    /// when it did not say), selective or not: in a selective start every
    /// step that runs is selected.
    pub fn for_start(mode: Option<CacheMode>, selective: bool) -> CacheRule {
        CacheRule {
            mode: mode.unwrap_or_default(),
            selected: selective,
            asked_to_use: mode == Some(CacheMode::Use),
        }
    }

    /// What the cache does for a step whose caching is `cached`
    /// (`Step::caching_enabled`).
    pub fn for_step(self, cached: bool) -> CacheUse {
        if !cached {
            return CacheUse::Uncached;
        }
        match self.mode {
            CacheMode::Off => CacheUse::Disabled,
            CacheMode::Refresh => CacheUse::Bypassed,
            CacheMode::Use if self.selected && !self.asked_to_use => CacheUse::Bypassed,
            CacheMode::Use => CacheUse::LookUp,
        }
    }
}

/// The key material of one step run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Hex SHA-256 of the RFC 8785 canonical form of `components`, with a
    /// Command's `Env` values and `Command` elements as the process sees
    /// them (numbers and booleans as their text).
    pub key: String,
    /// The canonical document hashed; stored with the entry so a later miss
    /// can be explained against it.
    pub components: Value,
    /// Components that use a per-execution value, so the key can never hit.
    pub warnings: Vec<String>,
}

/// Builds the key of a step run. `resolved_args` are the step's Arguments
/// after expression evaluation; `raw_args` the Arguments as written, used to
/// warn about per-execution values; `input_hashes` maps each `CacheInputs`
/// path to its content hash (`content::inputs::hash_input`).
///
/// Command components: `{"Type", "Command" or "Shell", "Env",
/// "WorkingDirectory", "CacheInputs"}` (a missing `Env` counts as `{}` and a
/// missing `WorkingDirectory` as null, since they run the same process).
/// Every other type: `{"Type", "Arguments"}`; only Command and Pass are ever
/// cached, but the key is well defined for all.
pub fn compute_key(
    kind: StepKind,
    raw_args: &Value,
    resolved_args: &Value,
    input_hashes: &BTreeMap<String, String>,
) -> CacheKey {
    let (components, raw_components) = match kind {
        StepKind::Command => {
            let mut c = Map::new();
            let mut raw = Map::new();
            c.insert("Type".into(), json!(kind.as_str()));
            for field in COMMAND_KEY_FIELDS {
                let value = resolved_args.get(field).filter(|v| !v.is_null());
                match (field, value) {
                    ("Command" | "Shell", None) => continue,
                    ("Env", None) => c.insert(field.into(), json!({})),
                    (_, None) => c.insert(field.into(), Value::Null),
                    (_, Some(v)) => c.insert(field.into(), v.clone()),
                };
                if let Some(r) = raw_args.get(field) {
                    raw.insert(field.into(), r.clone());
                }
            }
            let hashes: Map<String, Value> = input_hashes
                .iter()
                .map(|(path, hash)| (path.clone(), json!(hash)))
                .collect();
            c.insert("CacheInputs".into(), Value::Object(hashes));
            // The paths themselves are hashed content; only an expression in
            // the list can make them differ per execution.
            if let Some(r) = raw_args.get("CacheInputs") {
                raw.insert("CacheInputs".into(), r.clone());
            }
            (Value::Object(c), Value::Object(raw))
        }
        _ => (
            json!({"Type": kind.as_str(), "Arguments": resolved_args}),
            json!({"Arguments": raw_args}),
        ),
    };
    let key = key_of(kind, &components);
    let mut warnings = Vec::new();
    per_execution_warnings(&raw_components, &mut Vec::new(), &mut warnings);
    CacheKey {
        key,
        components,
        warnings,
    }
}

/// The key of a step's components: hashed as the process sees them, while
/// they are stored as resolved, so a miss is explained in the values the
/// definition wrote.
pub fn key_of(kind: StepKind, components: &Value) -> String {
    let hashed = match kind {
        StepKind::Command => as_the_process_sees_it(components),
        _ => components.clone(),
    };
    let canonical = serde_jcs::to_string(&hashed)
        // A `serde_json::Value` holds no NaN or infinity, the only values
        // canonical JSON cannot represent.
        .expect("a JSON value always has a canonical form");
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Command components as the process receives them: an `Env` value or a
/// `Command` element that is a number or boolean reaches the process as its
/// JSON text (`CommandArgs::from_resolved`), so `10` and `"10"` are one
/// value and make one key (and `10` and `10.0`, which canonical JSON would
/// merge, stay apart as the process sees them). A list or an object in
/// `Env` (a ForEach's whole `IterationOutputs`) reaches it as JSON text too.
/// Other values, secret markers included, are kept as they are.
fn as_the_process_sees_it(components: &Value) -> Value {
    let mut out = components.clone();
    if let Some(Value::Object(env)) = out.get_mut("Env") {
        for v in env.values_mut() {
            if v.is_array() || (v.is_object() && !super::secrets::is_marker(v)) {
                *v = Value::String(v.to_string());
            }
            as_text(v);
        }
    }
    if let Some(Value::Array(argv)) = out.get_mut("Command") {
        argv.iter_mut().for_each(as_text);
    }
    out
}

fn as_text(v: &mut Value) {
    if matches!(v, Value::Number(_) | Value::Bool(_)) {
        *v = Value::String(v.to_string());
    }
}

/// Whether two leaves at `path` of Command components reach the process as
/// the same text (an `Env` value or a `Command` element): not a difference.
fn same_for_the_process(path: &[PathSegment], c: &Value, p: &Value) -> bool {
    let in_process_text = matches!(
        path,
        [PathSegment::Key(k), _] if k == "Env" || k == "Command"
    );
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    };
    in_process_text && text(c).is_some() && text(c) == text(p)
}

/// Warns for each expression in `raw` that uses a per-execution value,
/// naming where it sits in the components.
fn per_execution_warnings(raw: &Value, path: &mut Vec<PathSegment>, out: &mut Vec<String>) {
    if expr::is_expression(raw) {
        let uses = expr::uses_per_execution_value(raw);
        if !uses.is_empty() {
            let verb = if uses.len() == 1 { "differs" } else { "differ" };
            out.push(format!(
                "{} uses {}, which {verb} in every execution, so this step can never hit the cache",
                render_path(path),
                uses.join(" and ")
            ));
        }
        return;
    }
    match raw {
        Value::Object(m) => {
            for (k, v) in m {
                path.push(PathSegment::Key(k.clone()));
                per_execution_warnings(v, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(PathSegment::Index(i));
                per_execution_warnings(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A component path as written in messages: `Env.EPOCHS`, `Command[2]`,
/// `CacheInputs["data/train.csv"]`.
fn render_path(path: &[PathSegment]) -> String {
    let s = expr::format_path(path);
    match s.strip_prefix('.') {
        Some(rest) => rest.to_string(),
        None => s,
    }
}

/// Explains a miss against the nearest earlier entry's components: each
/// differing leaf as `Env.EPOCHS: 10 -> 12`, with `(absent)` for an added or
/// removed key or list element, joined with `"; "`. Values are shown as JSON
/// (strings quoted) and long ones shortened. `None` when they are identical.
pub fn explain_difference(current: &Value, previous: &Value) -> Option<String> {
    let mut diffs = differences(current, previous);
    if diffs.is_empty() {
        return None;
    }
    let extra = diffs.len().saturating_sub(DIFFERENCES_SHOWN);
    diffs.truncate(DIFFERENCES_SHOWN);
    let mut out = diffs.join("; ");
    if extra > 0 {
        out.push_str(&format!("; and {extra} more"));
    }
    Some(out)
}

/// Each differing leaf of two documents, as `Env.EPOCHS: 10 -> 12` (see
/// [`explain_difference`]), in document order.
pub fn differences(current: &Value, previous: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    diff(Some(current), Some(previous), &mut Vec::new(), &mut diffs);
    diffs
}

fn diff(cur: Option<&Value>, prev: Option<&Value>, path: &mut Vec<PathSegment>, out: &mut Vec<String>) {
    match (cur, prev) {
        (Some(c), Some(p)) if c == p => {}
        (Some(c), Some(p)) if same_for_the_process(path, c, p) => {}
        // Neither a secret's value nor its digest is shown.
        (Some(c), Some(p)) if super::secrets::is_marker(c) && super::secrets::is_marker(p) => {
            out.push(format!("{}: secret changed", label(path)));
        }
        (Some(Value::Object(c)), Some(Value::Object(p))) => {
            let keys: BTreeSet<&String> = c.keys().chain(p.keys()).collect();
            for k in keys {
                path.push(PathSegment::Key(k.clone()));
                diff(c.get(k), p.get(k), path, out);
                path.pop();
            }
        }
        (Some(Value::Array(c)), Some(Value::Array(p))) => {
            for i in 0..c.len().max(p.len()) {
                path.push(PathSegment::Index(i));
                diff(c.get(i), p.get(i), path, out);
                path.pop();
            }
        }
        (None, None) => {}
        _ => out.push(format!("{}: {} -> {}", label(path), show(prev), show(cur))),
    }
}

fn label(path: &[PathSegment]) -> String {
    if path.is_empty() {
        "(whole)".to_string()
    } else {
        render_path(path)
    }
}

fn show(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(absent)".into();
    };
    if super::secrets::is_marker(v) {
        return "(a secret)".into();
    }
    let s = v.to_string();
    if s.chars().count() <= VALUE_CHARS_SHOWN {
        return s;
    }
    let mut short: String = s.chars().take(VALUE_CHARS_SHOWN).collect();
    short.push_str("...");
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn command_key(args: Value) -> CacheKey {
        compute_key(StepKind::Command, &args, &args, &none())
    }

    #[test]
    fn the_cache_rule_bypasses_selected_steps_unless_asked_to_use() {
        let rule = |mode, selected, asked_to_use| CacheRule {
            mode,
            selected,
            asked_to_use,
        };
        assert_eq!(rule(CacheMode::Use, false, false).for_step(true), CacheUse::LookUp);
        assert_eq!(rule(CacheMode::Use, true, false).for_step(true), CacheUse::Bypassed);
        assert_eq!(rule(CacheMode::Use, true, true).for_step(true), CacheUse::LookUp);
        assert_eq!(rule(CacheMode::Refresh, false, true).for_step(true), CacheUse::Bypassed);
        assert_eq!(rule(CacheMode::Off, false, false).for_step(true), CacheUse::Disabled);
        assert_eq!(rule(CacheMode::Use, false, false).for_step(false), CacheUse::Uncached);
        assert_eq!("refresh".parse::<CacheMode>(), Ok(CacheMode::Refresh));
        assert!("Use".parse::<CacheMode>().is_err());
    }

    #[test]
    fn key_is_stable_under_object_key_order() {
        let a: Value = serde_json::from_str(r#"{"Command": ["train"], "Env": {"A": "1", "B": "2"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"Env": {"B": "2", "A": "1"}, "Command": ["train"]}"#).unwrap();
        let (ka, kb) = (command_key(a), command_key(b));
        assert_eq!(ka.key, kb.key);
        assert_eq!(ka.key.len(), 64);
        assert!(ka.key.chars().all(|c| c.is_ascii_hexdigit()));
        let p1 = compute_key(
            StepKind::Pass,
            &json!({"x": 1, "y": [1, 2]}),
            &json!({"x": 1, "y": [1, 2]}),
            &none(),
        );
        let p2 = compute_key(
            StepKind::Pass,
            &json!({"y": [1, 2], "x": 1}),
            &json!({"y": [1, 2], "x": 1}),
            &none(),
        );
        assert_eq!(p1.key, p2.key);
        assert_eq!(
            p1.components,
            json!({"Type": "Pass", "Arguments": {"x": 1, "y": [1, 2]}})
        );
    }

    /// Issue 11 item 9: the process sees `10`, `"10"` and `10` alike.
    #[test]
    fn values_the_process_sees_alike_make_one_key() {
        let number = command_key(json!({"Command": ["train", 10, true], "Env": {"EPOCHS": 10, "DEBUG": false}}));
        let text = command_key(json!({"Command": ["train", "10", "true"], "Env": {"EPOCHS": "10", "DEBUG": "false"}}));
        assert_eq!(number.key, text.key);
        assert_eq!(number.components["Env"]["EPOCHS"], 10, "stored as written");
        let float = command_key(json!({"Command": ["train", 10, true], "Env": {"EPOCHS": 10.0, "DEBUG": false}}));
        assert_ne!(number.key, float.key, "10.0 reaches the process as another text");
        assert_eq!(
            explain_difference(&number.components, &text.components),
            None,
            "nothing differs for the process"
        );
        // A list in Env (a ForEach's whole IterationOutputs) reaches the
        // process as its JSON text.
        let list = command_key(json!({"Shell": "x", "Env": {"ALL": [{"S": {"Outputs": {"n": 1}}}]}}));
        let list_text = command_key(json!({"Shell": "x", "Env": {"ALL": r#"[{"S":{"Outputs":{"n":1}}}]"#}}));
        assert_eq!(list.key, list_text.key);
        let other = command_key(json!({"Shell": "x", "Env": {"ALL": [{"S": {"Outputs": {"n": 2}}}]}}));
        assert_ne!(list.key, other.key);
    }

    #[test]
    fn key_is_sha256_of_the_canonical_components() {
        let k = command_key(json!({"Shell": "echo hi"}));
        let canonical = serde_jcs::to_string(&k.components).unwrap();
        assert_eq!(
            canonical,
            r#"{"CacheInputs":{},"Env":{},"Shell":"echo hi","Type":"Command","WorkingDirectory":null}"#
        );
        assert_eq!(k.key, hex::encode(Sha256::digest(canonical.as_bytes())));
    }

    #[test]
    fn key_excludes_timeout_and_includes_what_runs() {
        let base = command_key(json!({"Command": ["train"], "Env": {"EPOCHS": 10}}));
        let timeout = command_key(json!({"Command": ["train"], "Env": {"EPOCHS": 10}, "TimeoutSeconds": 60}));
        assert_eq!(base.key, timeout.key);
        assert!(timeout.components.get("TimeoutSeconds").is_none());
        let env = command_key(json!({"Command": ["train"], "Env": {"EPOCHS": 12}}));
        assert_ne!(base.key, env.key);
        let wd = command_key(json!({"Command": ["train"], "Env": {"EPOCHS": 10}, "WorkingDirectory": "/w"}));
        assert_ne!(base.key, wd.key);
        let shell = command_key(json!({"Shell": "train", "Env": {"EPOCHS": 10}}));
        assert_ne!(base.key, shell.key);
        // No Env and an empty Env run the same process.
        assert_eq!(
            command_key(json!({"Command": ["x"]})).key,
            command_key(json!({"Command": ["x"], "Env": {}})).key
        );
        let args = json!({"Command": ["train"], "CacheInputs": ["data"]});
        let h1 = BTreeMap::from([("data".to_string(), "aa".to_string())]);
        let h2 = BTreeMap::from([("data".to_string(), "bb".to_string())]);
        let k1 = compute_key(StepKind::Command, &args, &args, &h1);
        let k2 = compute_key(StepKind::Command, &args, &args, &h2);
        assert_ne!(k1.key, k2.key);
        assert_eq!(k1.components["CacheInputs"], json!({"data": "aa"}));
        // The step type is part of the key.
        let args = json!({"Command": ["x"]});
        assert_ne!(
            compute_key(StepKind::Pass, &args, &args, &none()).key,
            command_key(args).key
        );
    }

    #[test]
    fn per_execution_values_are_warned_about() {
        let raw = json!({
            "Command": ["train", {"Get": "Parameters.Epochs"}],
            "Env": {
                "RUN_ID": {"Get": "Execution.PipelineExecutionId"},
                "NAME": {"Get": "Execution.PipelineName"},
                "TAG": {"Std:Join": {"On": "-", "Values": [
                    {"Get": "Execution.StartDateTime"}, {"Get": "Execution.PipelineExecutionArn"}]}}
            },
            "TimeoutSeconds": {"Get": "Execution.CurrentDateTime"}
        });
        let resolved = json!({"Command": ["train", 10], "Env": {"RUN_ID": "r1", "NAME": "p", "TAG": "t"}});
        let k = compute_key(StepKind::Command, &raw, &resolved, &none());
        assert_eq!(
            k.warnings,
            [
                "Env.RUN_ID uses Execution.PipelineExecutionId, which differs in every execution, so this step can never hit the cache",
                "Env.TAG uses Execution.StartDateTime and Execution.PipelineExecutionArn, which differ in every execution, so this step can never hit the cache",
            ]
        );
        let raw = json!({"when": [{"Get": "Execution.CurrentDateTime"}]});
        let k = compute_key(StepKind::Pass, &raw, &json!({"when": ["2024"]}), &none());
        assert_eq!(k.warnings.len(), 1);
        assert!(
            k.warnings[0].starts_with("Arguments.when[0] uses Execution.CurrentDateTime"),
            "{:?}",
            k.warnings
        );
        assert!(command_key(json!({"Command": ["x"]})).warnings.is_empty());
    }

    #[test]
    fn explain_difference_lists_each_differing_leaf() {
        let prev = json!({"Type": "Command", "Command": ["train", "--fast"], "Env": {"EPOCHS": 10, "OLD": "x"},
                          "CacheInputs": {"data/train.csv": "aa"}});
        let cur = json!({"Type": "Command", "Command": ["train", "--full", "--v"], "Env": {"EPOCHS": 12, "NEW": 5},
                         "CacheInputs": {"data/train.csv": "bb"}});
        assert_eq!(
            explain_difference(&cur, &prev).unwrap(),
            r#"CacheInputs["data/train.csv"]: "aa" -> "bb"; Command[1]: "--fast" -> "--full"; Command[2]: (absent) -> "--v"; Env.EPOCHS: 10 -> 12; Env.NEW: (absent) -> 5; Env.OLD: "x" -> (absent)"#
        );
        assert_eq!(explain_difference(&prev, &prev.clone()), None);
        assert_eq!(
            explain_difference(&json!({"Env": {"A": 1}}), &json!({"Env": "x"})).unwrap(),
            r#"Env: "x" -> {"A":1}"#
        );
        assert_eq!(explain_difference(&json!(1), &json!(2)).unwrap(), "(whole): 2 -> 1");
    }

    #[test]
    fn explain_difference_shortens_long_output() {
        let prev: Map<String, Value> = (0..15).map(|i| (format!("K{i:02}"), json!(i))).collect();
        let cur: Map<String, Value> = (0..15).map(|i| (format!("K{i:02}"), json!(i + 1))).collect();
        let msg = explain_difference(&Value::Object(cur), &Value::Object(prev)).unwrap();
        assert!(msg.starts_with("K00: 0 -> 1; K01: 1 -> 2"), "{msg}");
        assert!(msg.ends_with("K09: 9 -> 10; and 5 more"), "{msg}");
        let long = "x".repeat(200);
        let msg = explain_difference(&json!({"A": long}), &json!({"A": "y"})).unwrap();
        assert!(msg.ends_with("...") && msg.len() < 120, "{msg}");
    }

    #[test]
    fn a_changed_secret_is_named_without_value_or_digest() {
        use crate::domain::secrets::marker;
        let before = command_key(json!({"Shell": "x", "Env": {"T": marker("TOKEN", "aaaa1111")}}));
        let after = command_key(json!({"Shell": "x", "Env": {"T": marker("TOKEN", "bbbb2222")}}));
        assert_ne!(before.key, after.key);
        let reason = explain_difference(&after.components, &before.components).unwrap();
        assert_eq!(reason, "Env.T: secret changed");
        let plain = command_key(json!({"Shell": "x", "Env": {"T": "literal"}}));
        let reason = explain_difference(&after.components, &plain.components).unwrap();
        assert_eq!(reason, "Env.T: \"literal\" -> (a secret)");
    }
}
