//! Starting an execution: the step runs of a definition are created in one
//! statement, the ready ones queued, in one transaction with the execution.

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    decide::{prepare, NewSteps, Settings},
    definitions::{Definitions, LoadError},
    hashing::{InputHashes, MAX_PASSES},
    request::{StartError, StartRequest},
};
use crate::{
    domain::definition::Definition,
    ids::Arns,
    store::{
        executions::{self, ExecutionRow, NewExecution},
        pipelines::{self, PipelineHead},
        steps, StoreResult,
    },
};

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
    let handlers: std::collections::HashSet<&str> = steps.handlers.iter().map(|(n, _)| n.as_str()).collect();
    if !handlers.is_empty() {
        let (names, triggers): (Vec<String>, Vec<Value>) = steps.handlers.iter().cloned().unzip();
        crate::store::triggers::mark_handlers(conn, new.id, &names, &triggers).await?;
    }
    // Steps below a skipped step never run (a handler is judged instead).
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
            .filter(|r| r.status == "Pending" && !handlers.contains(r.step_name.as_str()))
            .filter(|r| r.dependencies.iter().any(|d| skipped.contains(d.as_str())))
            .map(|r| r.step_name.clone())
            .collect();
        steps::skip_with_descendants(conn, new.id, &children, "UpstreamNotRun").await?;
    }
    let mut queued = steps::promote_ready(conn, new.id, new.max_parallel_steps).await?;
    if !handlers.is_empty() {
        queued += super::triggers::settle(conn, new.id, new.max_parallel_steps, super::triggers::Ended::Other).await?;
    }
    let execution = executions::get(conn, new.id).await?;
    super::finish_if_done(conn, &execution).await?;
    steps::notify(conn, new.id, queued > 0).await?;
    Ok(())
}

/// Starts an execution of `pipeline_name`. Returns the execution and whether
/// it was created now (false: an earlier start with the same token).
pub async fn start_execution(
    pool: &PgPool,
    arns: &Arns,
    settings: &Settings,
    definitions: &Definitions,
    pipeline_name: &str,
    req: &StartRequest,
) -> Result<(ExecutionRow, bool), StartError> {
    let hashes = InputHashes::new(settings);
    let mut pass = 1;
    let (mut tx, pipeline, prepared) = loop {
        let mut tx = pool.begin().await?;
        let pipeline = pipelines::head_in(&mut tx, pipeline_name, req.pipeline_version).await?;
        if let Some(token) = &req.client_request_token {
            if let Some(existing) = executions::find_by_token(&mut tx, pipeline.id, token).await? {
                return same_request(existing, req).map(|e| (e, false));
            }
        }
        let definition = load_definition(&mut tx, definitions, &pipeline).await?;
        let prepared = prepare(&mut tx, arns, &pipeline, &definition, req, &hashes).await?;
        if !hashes.has_pending() || pass >= MAX_PASSES {
            break (tx, pipeline, prepared);
        }
        // The pass needed hashes it did not have: they are made with the
        // transaction ended, and the next pass decides with them. Past the
        // budget nothing more is hashed, and the last pass decides with
        // what is (the rest counts as changed).
        tx.rollback().await?;
        pass = match hashes.hash_pending().await {
            true => pass + 1,
            false => MAX_PASSES,
        };
    };
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
