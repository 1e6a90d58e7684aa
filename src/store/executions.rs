//! Executions: creation with all their step runs in one statement, reads for
//! the API, and the event log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{StoreError, StoreResult};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExecutionRow {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_name: String,
    pub pipeline_version: i32,
    pub status: String,
    pub failure_reason: Option<String>,
    pub failed_by_fail_step: bool,
    pub parameters: Value,
    pub selective_execution: Option<Value>,
    pub cache_mode: String,
    pub max_parallel_steps: Option<i32>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub client_request_token: Option<String>,
    pub request_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

pub const SELECT_EXECUTION: &str =
    "select e.id, e.pipeline_id, p.name as pipeline_name, e.pipeline_version, e.status, \
     e.failure_reason, e.failed_by_fail_step, e.parameters, e.selective_execution, e.cache_mode, \
     e.max_parallel_steps, e.display_name, e.description, e.client_request_token, e.request_hash, e.created_at, \
     e.started_at, e.ended_at from executions e join pipelines p on p.id = e.pipeline_id";

impl ExecutionRow {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "Succeeded" | "Failed" | "Stopped")
    }
}

pub struct NewExecution<'a> {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_version: i32,
    pub parameters: &'a Value,
    /// Steps reused from the source (see `engine::start::NewSteps`).
    pub reused_steps: &'a [ReusedStep],
    pub selective_execution: Option<&'a Value>,
    pub cache_mode: &'a str,
    pub max_parallel_steps: Option<i32>,
    pub display_name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub client_request_token: Option<&'a str>,
    pub request_hash: Option<&'a str>,
}

/// A reused step: a reference to the run whose outputs it takes.
#[derive(Debug, Clone)]
pub struct ReusedStep {
    pub step_name: String,
    pub step_run: Uuid,
    pub position: i32,
}

/// One step run to create.
#[derive(Debug, Clone)]
pub struct NewStepRun {
    pub id: Uuid,
    pub step_name: String,
    pub step_type: String,
    pub position: i32,
    pub status: String,
    pub skip_reason: Option<String>,
    pub arguments: Value,
    pub retry_policies: Value,
    pub cache_config: Option<Value>,
    pub dependencies: Vec<String>,
    pub dependents: Vec<String>,
    pub remaining_deps: i32,
    pub branch_of: Option<String>,
    pub branch_if: Option<bool>,
    /// Early cut-off: the source run compared with, and its execution.
    pub cutoff_run: Option<Uuid>,
    pub cutoff_execution: Option<Uuid>,
    /// For a step of a ForEach iteration: where it belongs.
    pub member: Option<Member>,
}

/// A step run's place in a ForEach: the iteration it runs in and the body
/// step it runs.
#[derive(Debug, Clone)]
pub struct Member {
    pub parent: String,
    pub iteration: i32,
    pub item: Value,
    pub local_name: String,
    pub body_index: i32,
    /// Waits for a slot under the ForEach's `MaxConcurrency`.
    pub slot_wait: bool,
}

/// One field of every row, as an array to bind and `unnest`.
fn column<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// One column of the reused steps; null rather than empty when there are none.
fn reused<T>(steps: &[ReusedStep], f: impl Fn(&ReusedStep) -> T) -> Option<Vec<T>> {
    (!steps.is_empty()).then(|| column(steps, f))
}

/// Inserts the execution row (status Executing).
pub async fn insert(conn: &mut PgConnection, new: &NewExecution<'_>) -> StoreResult<()> {
    sqlx::query(
        "insert into executions (id, pipeline_id, pipeline_version, status, parameters, definition, \
         selective_execution, cache_mode, max_parallel_steps, display_name, description, client_request_token, \
         request_hash, reused_step_names, reused_step_runs, reused_step_positions, started_at) \
         select $1, $2, $3, 'Executing', $4, v.definition, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now() \
         from pipeline_versions v where v.pipeline_id = $2 and v.version = $3",
    )
    .bind(new.id)
    .bind(new.pipeline_id)
    .bind(new.pipeline_version)
    .bind(new.parameters)
    .bind(new.selective_execution)
    .bind(new.cache_mode)
    .bind(new.max_parallel_steps)
    .bind(new.display_name)
    .bind(new.description)
    .bind(new.client_request_token)
    .bind(new.request_hash)
    .bind(reused(new.reused_steps, |r| r.step_name.clone()))
    .bind(reused(new.reused_steps, |r| r.step_run))
    .bind(reused(new.reused_steps, |r| r.position))
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts every step run of an execution in one statement: each column is
/// bound as an array and unnested, so a thousand steps cost one round trip.
/// Dependency lists travel comma-joined (step names cannot hold commas).
pub async fn insert_step_runs(
    conn: &mut PgConnection,
    execution_id: Uuid,
    pipeline_id: Uuid,
    steps: &[NewStepRun],
) -> StoreResult<()> {
    sqlx::query(
        "insert into step_runs (id, execution_id, pipeline_id, step_name, step_type, position, status, skip_reason, \
           arguments, retry_policies, cache_config, dependencies, dependents, remaining_deps, branch_of, branch_if, \
           started_at, ended_at, cutoff_run, cutoff_execution, parent, iteration, item, local_name, body_index, \
           slot_wait) \
         select u.id, $1, $2, u.name, u.type, u.position, u.status, u.skip_reason, u.arguments, u.retry, u.cache, \
           string_to_array(u.deps, ','), string_to_array(u.dependents, ','), u.remaining, u.branch_of, u.branch_if, \
           case when u.status = 'Skipped' then now() end, case when u.status = 'Skipped' then now() end, \
           u.cutoff_run, u.cutoff_execution, u.parent, u.iteration, u.item, u.local_name, u.body_index, \
           coalesce(u.slot_wait, false) \
         from unnest($3::uuid[], $4::text[], $5::text[], $6::int[], $7::text[], $8::text[], $9::jsonb[], \
           $10::jsonb[], $11::jsonb[], $12::text[], $13::text[], $14::int[], $15::text[], $16::bool[], \
           $17::uuid[], $18::uuid[], $19::text[], $20::int[], $21::jsonb[], $22::text[], $23::int[], $24::bool[]) \
           as u(id, name, type, position, status, skip_reason, arguments, retry, cache, deps, dependents, \
             remaining, branch_of, branch_if, cutoff_run, cutoff_execution, parent, iteration, item, local_name, \
             body_index, slot_wait)",
    )
    .bind(execution_id)
    .bind(pipeline_id)
    .bind(column(steps, |s| s.id))
    .bind(column(steps, |s| s.step_name.clone()))
    .bind(column(steps, |s| s.step_type.clone()))
    .bind(column(steps, |s| s.position))
    .bind(column(steps, |s| s.status.clone()))
    .bind(column(steps, |s| s.skip_reason.clone()))
    .bind(column(steps, |s| s.arguments.clone()))
    .bind(column(steps, |s| s.retry_policies.clone()))
    .bind(column(steps, |s| s.cache_config.clone()))
    .bind(column(steps, |s| s.dependencies.join(",")))
    .bind(column(steps, |s| s.dependents.join(",")))
    .bind(column(steps, |s| s.remaining_deps))
    .bind(column(steps, |s| s.branch_of.clone()))
    .bind(column(steps, |s| s.branch_if))
    .bind(column(steps, |s| s.cutoff_run))
    .bind(column(steps, |s| s.cutoff_execution))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.parent.clone())))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.iteration)))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.item.clone())))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.local_name.clone())))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.body_index)))
    .bind(column(steps, |s| s.member.as_ref().map(|m| m.slot_wait)))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An execution's parameters (fixed at its start).
pub async fn parameters(pool: &PgPool, id: Uuid) -> StoreResult<Value> {
    Ok(sqlx::query_scalar("select parameters from executions where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> StoreResult<ExecutionRow> {
    sqlx::query_as::<_, ExecutionRow>(&format!("{SELECT_EXECUTION} where e.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("execution {id} does not exist")))
}

/// The definition snapshot of an execution (kept out of `ExecutionRow`: it
/// can be large and the scheduler never needs it).
pub async fn definition(conn: &mut PgConnection, id: Uuid) -> StoreResult<Value> {
    sqlx::query_scalar("select definition from executions where id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("execution {id} does not exist")))
}

/// What the scheduler needs of an execution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExecutionState {
    pub id: Uuid,
    pub status: String,
    pub max_parallel_steps: Option<i32>,
}

/// The execution row, locked for the rest of the transaction. Every
/// transition of an execution takes this lock first, which serialises the
/// scheduling decisions of one execution across workers. `for no key
/// update`, not `for update`: inserting an event or an attempt checks its
/// foreign key with a key-share lock on this row, which must not wait for
/// (and so deadlock with) a transition holding it.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> StoreResult<ExecutionRow> {
    sqlx::query("select 1 from executions where id = $1 for no key update")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    get(conn, id).await
}

pub async fn find_by_token(
    conn: &mut PgConnection,
    pipeline_id: Uuid,
    token: &str,
) -> StoreResult<Option<ExecutionRow>> {
    Ok(sqlx::query_as::<_, ExecutionRow>(&format!(
        "{SELECT_EXECUTION} where e.pipeline_id = $1 and e.client_request_token = $2"
    ))
    .bind(pipeline_id)
    .bind(token)
    .fetch_optional(conn)
    .await?)
}

/// Executions of a pipeline, newest first, after the `(created_at, id)` key.
pub async fn list(
    pool: &PgPool,
    pipeline_id: Uuid,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> StoreResult<Vec<ExecutionRow>> {
    let (after_time, after_id) = after.unzip();
    Ok(sqlx::query_as::<_, ExecutionRow>(&format!(
        "{SELECT_EXECUTION} where e.pipeline_id = $1 and ($2::text is null or e.status = $2) \
         and ($3::timestamptz is null or (e.created_at, e.id) < ($3, $4)) \
         order by e.created_at desc, e.id desc limit $5"
    ))
    .bind(pipeline_id)
    .bind(status)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub step_name: Option<String>,
    pub status: String,
    pub detail: Option<Value>,
    pub created_at: DateTime<Utc>,
}

pub async fn events_after(pool: &PgPool, execution_id: Uuid, after: i64) -> StoreResult<Vec<EventRow>> {
    Ok(sqlx::query_as::<_, EventRow>(
        "select id, step_name, status, detail, created_at from execution_events \
         where execution_id = $1 and id > $2 order by id limit 1000",
    )
    .bind(execution_id)
    .bind(after)
    .fetch_all(pool)
    .await?)
}

pub async fn record_event(
    conn: &mut PgConnection,
    execution_id: Uuid,
    step_name: Option<&str>,
    status: &str,
    detail: Option<Value>,
) -> StoreResult<()> {
    sqlx::query("insert into execution_events (execution_id, step_name, status, detail) values ($1, $2, $3, $4)")
        .bind(execution_id)
        .bind(step_name)
        .bind(status)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}
