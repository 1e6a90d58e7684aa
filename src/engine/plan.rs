//! The dry run of a start (`POST .../executions/plan`): the same checks and
//! decisions as a start, written nowhere, reported per step. A step that
//! would run is reported as a `CacheHit` when its key can be computed now
//! (its inputs are parameters and reused steps' properties) and a usable
//! entry exists.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::{
    definitions::Definitions,
    start::{load_definition, prepare, CacheMode, StartError, StartRequest, StepPlan},
};
use crate::{
    domain::{
        cache::compute_key,
        definition::Step,
        duration::{cache_valid_since, ExpireAfter},
        expr::{evaluate, ExecutionVar, Resolver},
        Issue,
    },
    executor::cache::{expired, missing_artifacts},
    ids::Arns,
    store::{cache, pipelines, secrets, steps, StoreError},
};

#[derive(Debug, Serialize)]
pub struct StepVerdict {
    pub step_name: String,
    pub verdict: &'static str,
    pub reason: String,
    pub source_execution_arn: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExecutionPlan {
    pub steps: Vec<StepVerdict>,
    pub source_execution_arn: Option<String>,
    pub errors: Vec<Issue>,
}

impl ExecutionPlan {
    pub fn failed(message: String, issues: Vec<Issue>) -> ExecutionPlan {
        let errors = if issues.is_empty() {
            vec![Issue::new("", message)]
        } else {
            issues
        };
        ExecutionPlan {
            steps: Vec::new(),
            source_execution_arn: None,
            errors,
        }
    }
}

pub async fn plan_execution(
    pool: &PgPool,
    arns: &Arns,
    definitions: &Definitions,
    pipeline_name: &str,
    req: &StartRequest,
    cache_cap: ExpireAfter,
) -> Result<ExecutionPlan, StoreError> {
    // A transaction that is never committed: nothing a plan does is kept.
    let mut tx = pool.begin().await?;
    let pipeline = pipelines::head_in(&mut tx, pipeline_name, req.pipeline_version).await?;
    let definition = match load_definition(&mut tx, definitions, &pipeline).await {
        Ok(d) => d,
        Err(StartError::Invalid { message, issues }) => return Ok(ExecutionPlan::failed(message, issues)),
        Err(StartError::Store(e)) => return Err(e),
    };
    let prepared = match prepare(&mut tx, arns, &pipeline, &definition, req).await {
        Ok(p) => p,
        Err(StartError::Invalid { message, issues }) => return Ok(ExecutionPlan::failed(message, issues)),
        Err(StartError::Store(e)) => return Err(e),
    };
    let selective = req.selective_execution.is_some();
    let lookup_for_selected = req.cache_mode == Some(CacheMode::Use);
    let mut steps = Vec::with_capacity(definition.steps.len());
    for step in &definition.steps {
        let plan = prepared.plans.get(&step.name).cloned().unwrap_or(StepPlan::Run);
        let verdict = match plan {
            StepPlan::Reuse {
                source_execution_arn, ..
            } => StepVerdict {
                step_name: step.name.clone(),
                verdict: "Reuse",
                reason: "succeeded in the source execution; its outputs are reused".into(),
                source_execution_arn: Some(source_execution_arn),
            },
            StepPlan::Skip { reason } => StepVerdict {
                step_name: step.name.clone(),
                verdict: "Skip",
                reason,
                source_execution_arn: None,
            },
            StepPlan::Run => {
                let looks_up = match req.cache_mode.unwrap_or_default() {
                    CacheMode::Use => !selective || lookup_for_selected,
                    CacheMode::Refresh | CacheMode::Off => false,
                };
                let hit = if looks_up {
                    let known = Known {
                        parameters: &prepared.parameters,
                        plans: &prepared.plans,
                        cache_cap,
                    };
                    cache_hit_now(&mut tx, arns, &pipeline, step, &known).await?
                } else {
                    None
                };
                match hit {
                    Some(arn) => StepVerdict {
                        step_name: step.name.clone(),
                        verdict: "CacheHit",
                        reason: "a cache entry with the same key exists".into(),
                        source_execution_arn: Some(arn),
                    },
                    None => StepVerdict {
                        step_name: step.name.clone(),
                        verdict: "Run",
                        reason: if selective { "selected".into() } else { "runs".into() },
                        source_execution_arn: None,
                    },
                }
            }
        };
        steps.push(verdict);
    }
    tx.rollback().await?;
    Ok(ExecutionPlan {
        steps,
        source_execution_arn: prepared.source_arn,
        errors: Vec::new(),
    })
}

/// Resolves what is known before the execution exists: parameters and the
/// properties of reused steps. Anything else makes the key unknowable now.
struct KnownNow<'a> {
    parameters: &'a serde_json::Map<String, Value>,
    reused: HashMap<String, Value>,
    pipeline_name: &'a str,
    arns: &'a Arns,
    /// The keyed digest of each secret the step uses, by name.
    secret_digests: HashMap<String, String>,
}

impl Resolver for KnownNow<'_> {
    fn parameter(&self, name: &str) -> Option<Value> {
        self.parameters.get(name).cloned()
    }
    fn execution_var(&self, var: ExecutionVar) -> Value {
        match var {
            ExecutionVar::PipelineName => Value::String(self.pipeline_name.to_string()),
            ExecutionVar::PipelineArn => Value::String(self.arns.pipeline(self.pipeline_name)),
            // Per-execution values are not known yet.
            _ => Value::Null,
        }
    }
    fn step_properties(&self, step: &str) -> Option<Value> {
        self.reused.get(step).cloned()
    }
    fn artifact_json(&self, _step: &str, _file: &str) -> Result<Value, String> {
        Err("artifact contents are not read when planning".into())
    }
    fn secret(&self, name: &str) -> Result<Value, String> {
        let digest = self
            .secret_digests
            .get(name)
            .ok_or_else(|| format!("secret {name:?} does not exist"))?;
        Ok(crate::domain::secrets::marker(name, digest))
    }
}

/// What a plan knows before the execution exists.
struct Known<'a> {
    parameters: &'a serde_json::Map<String, Value>,
    plans: &'a HashMap<String, StepPlan>,
    /// `cache.max_expire_after`.
    cache_cap: ExpireAfter,
}

async fn cache_hit_now(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &pipelines::PipelineHead,
    step: &Step,
    known: &Known<'_>,
) -> Result<Option<String>, StoreError> {
    let (parameters, plans, cache_cap) = (known.parameters, known.plans, known.cache_cap);
    if !step.caching_enabled() {
        return Ok(None);
    }
    let mut reused = HashMap::new();
    for dependency in &step.depends_on {
        match plans.get(dependency) {
            Some(StepPlan::Reuse { step_run, .. }) => {
                let properties = steps::properties(conn, *step_run).await?;
                reused.insert(
                    dependency.clone(),
                    properties.unwrap_or_else(|| Value::Object(Default::default())),
                );
            }
            _ => return Ok(None),
        }
    }
    let per_execution = crate::domain::expr::uses_per_execution_value(&step.arguments);
    let has_inputs = step.arguments.get("CacheInputs").is_some();
    if !per_execution.is_empty() || has_inputs {
        return Ok(None);
    }
    let used: Vec<String> = crate::domain::secrets::env_secrets(&step.arguments)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let secret_digests = if used.is_empty() {
        HashMap::new()
    } else {
        secrets::sealed(conn, &used)
            .await?
            .into_iter()
            .map(|row| (row.name, row.digest))
            .collect()
    };
    let resolver = KnownNow {
        parameters,
        reused,
        pipeline_name: &pipeline.name,
        arns,
        secret_digests,
    };
    let Ok(resolved) = evaluate(&step.arguments, &resolver) else {
        return Ok(None);
    };
    let key = compute_key(step.kind, &step.arguments, &resolved, &Default::default());
    let expire_after = step.cache.and_then(|c| c.expire_after);
    let earliest = cache_valid_since(expire_after, cache_cap, Utc::now());
    for entry in cache::entries_with_key(conn, pipeline.id, &step.name, &key.key, 20).await? {
        if !expired(&entry, earliest) && missing_artifacts(&entry).is_none() {
            return Ok(Some(arns.execution(&entry.pipeline_name, entry.execution_id)));
        }
    }
    Ok(None)
}
