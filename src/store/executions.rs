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
    pub definition: Value,
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
     e.failure_reason, e.failed_by_fail_step, e.parameters, e.definition, e.selective_execution, e.cache_mode, \
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
    pub definition: &'a Value,
    pub selective_execution: Option<&'a Value>,
    pub cache_mode: &'a str,
    pub max_parallel_steps: Option<i32>,
    pub display_name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub client_request_token: Option<&'a str>,
    pub request_hash: Option<&'a str>,
}

/// One step run to create. Serialized into a JSON array so that any number
/// of steps is inserted in one statement.
#[derive(Debug, Clone, Serialize)]
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
    pub properties: Option<Value>,
    pub metadata: Value,
    pub reused_from: Option<Value>,
    pub cache_status: Option<String>,
    pub artifacts_dir: Option<String>,
    /// Set for steps that are finished on creation (reused or skipped).
    pub finished: bool,
}

/// Inserts the execution row (status Executing).
pub async fn insert(conn: &mut PgConnection, new: &NewExecution<'_>) -> StoreResult<()> {
    sqlx::query(
        "insert into executions (id, pipeline_id, pipeline_version, status, parameters, definition, \
         selective_execution, cache_mode, max_parallel_steps, display_name, description, client_request_token, \
         request_hash, started_at) values ($1, $2, $3, 'Executing', $4, $5, $6, $7, $8, $9, $10, $11, $12, now())",
    )
    .bind(new.id)
    .bind(new.pipeline_id)
    .bind(new.pipeline_version)
    .bind(new.parameters)
    .bind(new.definition)
    .bind(new.selective_execution)
    .bind(new.cache_mode)
    .bind(new.max_parallel_steps)
    .bind(new.display_name)
    .bind(new.description)
    .bind(new.client_request_token)
    .bind(new.request_hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts every step run of an execution in one statement.
pub async fn insert_step_runs(
    conn: &mut PgConnection,
    execution_id: Uuid,
    pipeline_id: Uuid,
    steps: &[NewStepRun],
) -> StoreResult<()> {
    let payload = serde_json::to_value(steps).expect("step runs serialize");
    sqlx::query(
        "insert into step_runs (id, execution_id, pipeline_id, step_name, step_type, position, status, skip_reason, \
           arguments, retry_policies, cache_config, dependencies, dependents, remaining_deps, branch_of, branch_if, \
           properties, metadata, reused_from, cache_status, artifacts_dir, started_at, ended_at) \
         select (s->>'id')::uuid, $1, $2, s->>'step_name', s->>'step_type', (s->>'position')::int, s->>'status', \
           s->>'skip_reason', s->'arguments', s->'retry_policies', nullif(s->'cache_config', 'null'::jsonb), \
           array(select jsonb_array_elements_text(s->'dependencies')), \
           array(select jsonb_array_elements_text(s->'dependents')), (s->>'remaining_deps')::int, \
           s->>'branch_of', (s->>'branch_if')::boolean, nullif(s->'properties', 'null'::jsonb), s->'metadata', \
           nullif(s->'reused_from', 'null'::jsonb), s->>'cache_status', s->>'artifacts_dir', \
           case when (s->>'finished')::boolean then now() end, case when (s->>'finished')::boolean then now() end \
         from jsonb_array_elements($3) s",
    )
    .bind(execution_id)
    .bind(pipeline_id)
    .bind(payload)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, status, case when skip_reason is null then null else jsonb_build_object('skip_reason', skip_reason) end \
         from step_runs where execution_id = $1 and status <> 'Pending' order by position",
    )
    .bind(execution_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> StoreResult<ExecutionRow> {
    sqlx::query_as::<_, ExecutionRow>(&format!("{SELECT_EXECUTION} where e.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("execution {id} does not exist")))
}

/// The execution row, locked for the rest of the transaction. Every
/// transition of an execution takes this lock first, which serialises the
/// scheduling decisions of one execution across workers.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> StoreResult<ExecutionRow> {
    sqlx::query("select 1 from executions where id = $1 for update")
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
