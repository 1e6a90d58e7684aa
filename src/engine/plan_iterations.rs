//! The plan of a ForEach, iteration by iteration, in compact form: how many
//! iterations are reused from the source execution and how many run, with
//! the items that run. It pairs items with the source's iterations by the
//! function the expansion uses (`domain::for_each::match_items`), and
//! predicts each body step's early cut-off by computing its key as the
//! worker will (`content::step_key`) and comparing it with the key its run
//! in the source recorded.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{decide::Settings, known::KnownNow};
use crate::{
    content,
    domain::{
        definition::{for_each::ForEachSpec, StepKind},
        expr::{evaluate, uses_per_execution_value, ExecutionVar, Resolver},
        for_each::{items_of, match_items},
    },
    store::{for_each as store, selective, StoreError},
};

/// How many items a plan lists by name.
const LISTED: usize = 20;

#[derive(Debug, Serialize)]
pub struct IterationPlan {
    /// The number of items, when they are known before anything runs.
    pub items: Option<usize>,
    /// Iterations whose every body step takes its outputs from the source.
    pub reuse: usize,
    /// Iterations that run (at least one body step runs).
    pub run: usize,
    /// The first items that run, with why.
    pub runs: Vec<IterationRun>,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct IterationRun {
    pub index: usize,
    pub item: Value,
    pub reason: String,
}

/// The resolver of a body step in one iteration: the plan's knowledge, the
/// item, and the outputs its siblings are predicted to have.
struct InIteration<'a> {
    known: &'a KnownNow<'a>,
    item: &'a Value,
    index: usize,
    siblings: &'a HashMap<String, Value>,
}

impl Resolver for InIteration<'_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.known.parameter(name)
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        self.known.execution_var(var)
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        self.siblings
            .get(step)
            .cloned()
            .or_else(|| self.known.step_properties(step))
    }
    fn artifact_json(&self, step: &str, file: &str) -> Result<Value, String> {
        match self.siblings.get(step) {
            Some(p) => crate::content::artifacts::read_json(Some(p), step, file, self.known.max_outputs_bytes),
            None => self.known.artifact_json(step, file),
        }
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        self.known.secret(name)
    }
    fn current_item(&self) -> Option<(Value, usize)> {
        Some((self.item.clone(), self.index))
    }
}

/// The iterations of ForEach `name` that will run, given what `known`
/// knows and the source execution `source` (if any).
pub async fn plan(
    conn: &mut PgConnection,
    settings: &Settings,
    known: &KnownNow<'_>,
    name: &str,
    spec: &ForEachSpec,
    source: Option<Uuid>,
    max_items: usize,
) -> Result<IterationPlan, StoreError> {
    let unknown = |reason: String| IterationPlan {
        items: None,
        reuse: 0,
        run: 0,
        runs: Vec::new(),
        reason,
    };
    let items = match evaluate(&spec.items, known).and_then(|v| items_of(v, max_items)) {
        Ok(items) => items,
        Err(e) => return Ok(unknown(format!("its items are known only once it runs ({e})"))),
    };
    let source_iterations = match source {
        Some(source) => match store::run_in(conn, source, name).await? {
            Some((_, execution)) => store::source_iterations(conn, execution, name).await?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    // Paired exactly as the expansion pairs them.
    let pairs = match_items(&items, &super::for_each::source_view(&source_iterations));
    let run_ids: Vec<Uuid> = source_iterations
        .iter()
        .flat_map(|it| it.runs.as_object().into_iter().flat_map(|m| m.values()))
        .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    let outputs = selective::run_properties(conn, &run_ids).await?;
    let started = std::time::Instant::now();
    let mut out = IterationPlan {
        items: Some(items.len()),
        reuse: 0,
        run: 0,
        runs: Vec::new(),
        reason: String::new(),
    };
    for (i, item) in items.iter().enumerate() {
        let why = match pairs[i].and_then(|j| source_iterations.iter().find(|it| it.iteration.max(0) as usize == j)) {
            None if source.is_none() => Some("no source execution to reuse from".to_string()),
            None => Some("no iteration of the source ran this item and succeeded".to_string()),
            Some(it) => {
                let iteration = InIterationSource {
                    keys: &it.keys,
                    runs: &it.runs,
                    outputs: &outputs,
                };
                unchanged(settings, started, known, spec, item, i, &iteration)
                    .await
                    .err()
            }
        };
        match why {
            None => out.reuse += 1,
            Some(reason) => {
                out.run += 1;
                if out.runs.len() < LISTED {
                    out.runs.push(IterationRun {
                        index: i,
                        item: item.clone(),
                        reason,
                    });
                }
            }
        }
    }
    out.reason = format!(
        "{} of {} iterations reuse their outputs from the source; {} run",
        out.reuse,
        items.len(),
        out.run
    );
    Ok(out)
}

struct InIterationSource<'a> {
    keys: &'a Value,
    runs: &'a Value,
    outputs: &'a HashMap<Uuid, Value>,
}

/// `Ok` when every body step of the iteration is predicted to take its
/// outputs from its run in the source: its key, computed now, equals the
/// key that run recorded.
async fn unchanged(
    settings: &Settings,
    started: std::time::Instant,
    known: &KnownNow<'_>,
    spec: &ForEachSpec,
    item: &Value,
    index: usize,
    source: &InIterationSource<'_>,
) -> Result<(), String> {
    let mut siblings: HashMap<String, Value> = HashMap::new();
    for body in &spec.body {
        if !matches!(body.kind, StepKind::Command | StepKind::Pass) {
            return Err(format!("its {} step {} always runs", body.kind.as_str(), body.name));
        }
        if !uses_per_execution_value(&body.arguments).is_empty() {
            return Err(format!("{} uses a value that differs in every execution", body.name));
        }
        let resolver = InIteration {
            known,
            item,
            index,
            siblings: &siblings,
        };
        let resolved = evaluate(&body.arguments, &resolver)
            .map_err(|e| format!("the inputs of {} are known only once it runs ({e})", body.name))?;
        let limits = settings
            .inputs_left(started)
            .ok_or_else(|| "the plan's hashing took longer than worker.cache_input_timeout_seconds".to_string())?;
        let key = content::step_key(body.kind, &body.arguments, &resolved, &resolved, limits)
            .await
            .map_err(|e| format!("the key of {} cannot be computed: {e}", body.name))?;
        match source.keys.get(&body.name).and_then(Value::as_str) {
            Some(k) if k == key.key => {}
            Some(_) => return Err(format!("the inputs of {} differ from its run in the source", body.name)),
            None => return Err(format!("{} recorded no inputs in the source", body.name)),
        }
        let run = source
            .runs
            .get(&body.name)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok());
        let properties = run.and_then(|r| source.outputs.get(&r)).cloned().unwrap_or(Value::Null);
        siblings.insert(body.name.clone(), properties);
    }
    Ok(())
}
