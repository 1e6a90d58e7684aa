//! Starting an execution: the step runs of a definition are created in one
//! statement, the ready ones queued, in one transaction with the execution.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::definitions::{Definitions, LoadError};
use crate::{
    domain::{definition::Definition, Issue},
    ids::Arns,
    store::{
        executions::{self, ExecutionRow, NewExecution, NewStepRun, ReusedStep},
        pipelines::{self, PipelineHead},
        steps, StoreResult,
    },
};

/// What becomes of one step when the execution is created. A plain start
/// runs every step; selective execution reuses or skips some.
#[derive(Debug, Clone)]
pub enum StepPlan {
    Run,
    /// Succeeded at once with the outputs of `step_run` (of the source
    /// execution, or the run that the source itself reused).
    Reuse {
        step_run: Uuid,
        source_execution_arn: String,
    },
    Skip {
        reason: String,
    },
}

/// What a start writes: a row for every step that runs or is skipped, and
/// for every reused step a reference to the run whose outputs it reuses
/// (not a copy: see migration 0004).
#[derive(Debug, Default)]
pub struct NewSteps {
    pub runs: Vec<NewStepRun>,
    pub reused: Vec<ReusedStep>,
}

/// Builds the rows of every step of `definition` following `plan` (a step
/// missing from `plan` runs).
pub fn new_steps(definition: &Definition, plan: &dyn Fn(&str) -> StepPlan) -> NewSteps {
    let plans: HashMap<&str, StepPlan> = definition
        .steps
        .iter()
        .map(|s| (s.name.as_str(), plan(&s.name)))
        .collect();
    let mut new = NewSteps::default();
    for (position, step) in definition.steps.iter().enumerate() {
        let (status, skip_reason) = match &plans[step.name.as_str()] {
            StepPlan::Run => ("Pending", None),
            StepPlan::Skip { reason } => ("Skipped", Some(reason.clone())),
            StepPlan::Reuse { step_run, .. } => {
                new.reused.push(ReusedStep {
                    step_name: step.name.clone(),
                    step_run: *step_run,
                    position: position as i32,
                });
                continue;
            }
        };
        let remaining = step
            .depends_on
            .iter()
            .filter(|d| !matches!(plans.get(d.as_str()), Some(StepPlan::Reuse { .. })))
            .count();
        new.runs.push(NewStepRun {
            id: Uuid::now_v7(),
            step_name: step.name.clone(),
            step_type: step.kind.as_str().to_string(),
            position: position as i32,
            status: status.into(),
            skip_reason,
            arguments: step.arguments.clone(),
            retry_policies: serde_json::to_value(&step.retry_policies).expect("policies serialize"),
            cache_config: step
                .cache
                .map(|c| serde_json::to_value(c).expect("cache config serializes")),
            dependencies: step.depends_on.clone(),
            dependents: definition.dag.children(&step.name),
            remaining_deps: remaining as i32,
            branch_of: step.branch.as_ref().map(|b| b.condition.clone()),
            branch_if: step.branch.as_ref().map(|b| b.if_branch),
        });
    }
    new
}

/// Creates the execution and its step runs and queues the ready steps.
pub async fn create(conn: &mut PgConnection, new: &NewExecution<'_>, steps: &NewSteps) -> StoreResult<()> {
    executions::insert(conn, new).await?;
    // Steps that are settled at creation (reused, skipped) are summed up in
    // the execution's first event rather than one event each: a selective
    // run of one step of a thousand writes one event, not a thousand.
    let reused = steps.reused.len();
    let skipped = steps.runs.iter().filter(|r| r.status == "Skipped").count();
    let detail = (reused + skipped > 0).then(|| json!({"reused_steps": reused, "skipped_steps": skipped}));
    executions::record_event(conn, new.id, None, "Executing", detail).await?;
    executions::insert_step_runs(conn, new.id, new.pipeline_id, &steps.runs).await?;
    // Steps below a skipped step never run.
    let skipped: std::collections::HashSet<&str> = steps
        .runs
        .iter()
        .filter(|r| r.status == "Skipped")
        .map(|r| r.step_name.as_str())
        .collect();
    if !skipped.is_empty() {
        let children: Vec<String> = steps
            .runs
            .iter()
            .filter(|r| r.status == "Pending" && r.dependencies.iter().any(|d| skipped.contains(d.as_str())))
            .map(|r| r.step_name.clone())
            .collect();
        steps::skip_with_descendants(conn, new.id, &children, "UpstreamNotRun").await?;
    }
    let queued = steps::promote_ready(conn, new.id, new.max_parallel_steps).await?;
    let execution = executions::get(conn, new.id).await?;
    super::finish_if_done(conn, &execution).await?;
    steps::notify(conn, new.id, queued > 0).await?;
    Ok(())
}

/// A start request, already shape-checked by the API.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub parameters: serde_json::Map<String, Value>,
    pub pipeline_version: Option<i32>,
    pub client_request_token: Option<String>,
    pub selective_execution: Option<SelectiveRequest>,
    /// None when the request did not say: `use`, except that selected steps
    /// of a selective execution then bypass the lookup (SPEC 5 rule 7).
    pub cache_mode: Option<CacheMode>,
    pub max_parallel_steps: Option<i32>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// SHA-256 of the canonical request body, for idempotent starts.
    pub request_hash: String,
}

#[derive(Debug, Clone)]
pub struct SelectiveRequest {
    pub source_execution: Option<String>,
    pub selected_steps: crate::domain::selective::SelectedSteps,
    pub inherit_parameters: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Use,
    Refresh,
    Off,
}

impl CacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Use => "use",
            CacheMode::Refresh => "refresh",
            CacheMode::Off => "off",
        }
    }
}

#[derive(Debug)]
pub enum StartError {
    Invalid { message: String, issues: Vec<Issue> },
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        StartError::Store(e)
    }
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> Self {
        StartError::Store(e.into())
    }
}

impl StartError {
    pub fn invalid(message: impl Into<String>, issues: Vec<Issue>) -> StartError {
        StartError::Invalid {
            message: message.into(),
            issues,
        }
    }
}

/// Starts an execution of `pipeline_name`. Returns the execution and whether
/// it was created now (false: an earlier start with the same token).
pub async fn start_execution(
    pool: &PgPool,
    arns: &Arns,
    definitions: &Definitions,
    pipeline_name: &str,
    req: &StartRequest,
) -> Result<(ExecutionRow, bool), StartError> {
    let mut tx = pool.begin().await?;
    let pipeline = pipelines::head_in(&mut tx, pipeline_name, req.pipeline_version).await?;
    if let Some(token) = &req.client_request_token {
        if let Some(existing) = executions::find_by_token(&mut tx, pipeline.id, token).await? {
            return same_request(existing, req).map(|e| (e, false));
        }
    }
    let definition = load_definition(&mut tx, definitions, &pipeline).await?;
    let prepared = prepare(&mut tx, arns, &pipeline, &definition, req).await?;
    let id = Uuid::now_v7();
    let new = NewExecution {
        id,
        pipeline_id: pipeline.id,
        pipeline_version: pipeline.version,
        parameters: &Value::Object(prepared.parameters),
        reused_steps: &prepared.steps.reused,
        selective_execution: prepared.selective.as_ref(),
        cache_mode: req.cache_mode.unwrap_or_default().as_str(),
        max_parallel_steps: req.max_parallel_steps.or(pipeline.max_parallel_steps),
        display_name: req.display_name.as_deref(),
        description: req.description.as_deref(),
        client_request_token: req.client_request_token.as_deref(),
        request_hash: Some(&req.request_hash),
    };
    match create(&mut tx, &new, &prepared.steps).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Database(e)) if crate::store::is_unique_violation(&e) => {
            // A concurrent start with the same token won the race.
            drop(tx);
            let mut conn = pool.acquire().await?;
            let token = req.client_request_token.as_deref().unwrap_or_default();
            let existing = executions::find_by_token(&mut conn, pipeline.id, token)
                .await?
                .ok_or(StartError::Store(crate::store::StoreError::Database(e)))?;
            return same_request(existing, req).map(|e| (e, false));
        }
        Err(e) => return Err(e.into()),
    }
    let execution = executions::get(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(execution.id = %id, pipeline = %pipeline_name, version = pipeline.version, "execution started");
    Ok((execution, true))
}

fn same_request(existing: ExecutionRow, req: &StartRequest) -> Result<ExecutionRow, StartError> {
    if existing.request_hash.as_deref() == Some(req.request_hash.as_str()) {
        Ok(existing)
    } else {
        Err(StartError::Store(crate::store::StoreError::Conflict(format!(
            "client_request_token {:?} was already used for execution {} with a different request body",
            req.client_request_token.as_deref().unwrap_or_default(),
            existing.id
        ))))
    }
}

/// The effective parameters, the step plan and the recorded selective
/// request of a start.
pub struct Prepared {
    pub parameters: serde_json::Map<String, Value>,
    pub plans: HashMap<String, StepPlan>,
    pub steps: NewSteps,
    pub selective: Option<Value>,
    pub source_arn: Option<String>,
}

/// Everything a start decides before writing: parameters and, for a
/// selective execution, which steps run, are reused or skipped. The plan
/// endpoint calls this too, without writing.
pub async fn prepare(
    conn: &mut PgConnection,
    arns: &Arns,
    pipeline: &PipelineHead,
    definition: &Definition,
    req: &StartRequest,
) -> Result<Prepared, StartError> {
    let Some(selective_request) = &req.selective_execution else {
        let parameters = resolve_parameters(definition, &req.parameters)?;
        let steps = new_steps(definition, &|_| StepPlan::Run);
        check_secrets(conn, definition, &steps).await?;
        return Ok(Prepared {
            parameters,
            plans: HashMap::new(),
            steps,
            selective: None,
            source_arn: None,
        });
    };
    let cache_lookup = req.cache_mode == Some(CacheMode::Use);
    let planned = super::selective::plan(
        conn,
        arns,
        pipeline,
        definition,
        &req.parameters,
        selective_request,
        cache_lookup,
    )
    .await?;
    let steps = new_steps(definition, &|name| {
        planned.plans.get(name).cloned().unwrap_or(StepPlan::Run)
    });
    check_secrets(conn, definition, &steps).await?;
    Ok(Prepared {
        parameters: planned.parameters,
        source_arn: planned.source.as_ref().map(|s| s.arn.clone()),
        plans: planned.plans,
        steps,
        selective: Some(planned.record),
    })
}

/// Refuses a start whose steps that will run use a secret that does not
/// exist, naming each (a secret deleted later fails its step at run time).
async fn check_secrets(conn: &mut PgConnection, definition: &Definition, steps: &NewSteps) -> Result<(), StartError> {
    let uses: Vec<(&str, String, String)> = steps
        .runs
        .iter()
        .filter(|r| r.status == "Pending" && r.step_type == "Command")
        .flat_map(|r| {
            crate::domain::secrets::env_secrets(&r.arguments)
                .into_iter()
                .map(|(var, name)| (r.step_name.as_str(), var, name))
        })
        .collect();
    if uses.is_empty() {
        return Ok(());
    }
    let mut names: Vec<String> = uses.iter().map(|(_, _, n)| n.clone()).collect();
    names.sort();
    names.dedup();
    let existing = crate::store::secrets::existing(conn, &names).await?;
    let issues: Vec<Issue> = uses
        .iter()
        .filter(|(_, _, name)| !existing.contains(name))
        .map(|(step, var, name)| {
            let pointer = definition.step(step).map(|s| s.pointer.clone()).unwrap_or_default();
            let push = crate::domain::pointer_push;
            let at = push(&push(&push(&pointer, "Arguments"), "Env"), var);
            Issue::new(at, format!("step {step} uses secret {name:?}, which does not exist"))
        })
        .collect();
    let missing: Vec<&String> = names.iter().filter(|n| !existing.contains(n)).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(StartError::invalid(format!("secret {one:?} does not exist"), issues)),
        many => {
            let list: Vec<String> = many.iter().map(|n| format!("{n:?}")).collect();
            Err(StartError::invalid(
                format!("secrets {} do not exist", list.join(", ")),
                issues,
            ))
        }
    }
}

pub async fn load_definition(
    conn: &mut PgConnection,
    definitions: &Definitions,
    pipeline: &PipelineHead,
) -> Result<std::sync::Arc<Definition>, StartError> {
    definitions
        .load(conn, pipeline.id, pipeline.version)
        .await
        .map_err(|e| match e {
            LoadError::Invalid(issues) => StartError::invalid("the stored definition no longer validates", issues),
            LoadError::Store(e) => StartError::Store(e),
        })
}

pub fn resolve_parameters(
    definition: &Definition,
    given: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, StartError> {
    definition.resolve_parameters(given).map_err(|issues| {
        let message = match issues.as_slice() {
            [one] => one.message.clone(),
            many => format!("{} parameter problems, see details", many.len()),
        };
        StartError::invalid(message, issues)
    })
}
