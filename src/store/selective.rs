//! What selective execution reads of earlier executions: candidate source
//! executions, the state of their steps, and what a run left that decides
//! whether it can be reused (its artifacts, the content it recorded).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreResult;

/// One step of a source execution: what the rules need, not its outputs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceRun {
    /// The step run that produced the outputs: the source's own, or the one
    /// the source itself reused.
    pub id: Uuid,
    pub step_name: String,
    /// The type the step had in the run (only a Command leaves artifacts).
    pub step_type: String,
    pub status: String,
    /// A Condition step's `Outcome`.
    pub outcome: Option<bool>,
}

/// The most recent ended execution of the pipeline.
pub async fn latest_ended(conn: &mut PgConnection, pipeline_id: Uuid) -> StoreResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "select id from executions where pipeline_id = $1 and status in ('Succeeded', 'Failed', 'Stopped') \
         order by created_at desc limit 1",
    )
    .bind(pipeline_id)
    .fetch_optional(conn)
    .await?)
}

/// The most recent ended execution of the pipeline in which every step of
/// `upstream` succeeded (SPEC 5 rule 5).
pub async fn latest_with_succeeded(
    conn: &mut PgConnection,
    pipeline_id: Uuid,
    upstream: &[String],
) -> StoreResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "select e.id from executions e where e.pipeline_id = $1 and e.status in ('Succeeded', 'Failed', 'Stopped') \
         and (select count(*) from execution_steps s where s.execution_id = e.id and s.step_name = any($2) \
              and s.status = 'Succeeded') = cardinality($2) \
         order by e.created_at desc limit 1",
    )
    .bind(pipeline_id)
    .bind(upstream)
    .fetch_optional(conn)
    .await?)
}

/// Every step of an execution, reused ones included.
pub async fn source_runs(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<Vec<SourceRun>> {
    Ok(sqlx::query_as(
        "select id, step_name, step_type, status, \
           case when jsonb_typeof(properties -> 'Outcome') = 'boolean' then (properties ->> 'Outcome')::boolean end \
           as outcome from execution_steps \
         where execution_id = $1",
    )
    .bind(execution_id)
    .fetch_all(conn)
    .await?)
}

/// What decides whether a run's outputs can still be reused, and whether
/// the content it read has changed since.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunFacts {
    pub id: Uuid,
    /// `Properties.ArtifactsUri`, for a Command step.
    pub artifacts_uri: Option<String>,
    /// How many entries the step had left in it when it ended.
    pub artifact_entries: Option<i64>,
    /// The content hash of each `CacheInputs` path, as the run recorded it.
    pub input_hashes: Option<Value>,
}

/// The facts of the runs `ids`, by id.
pub async fn run_facts(conn: &mut PgConnection, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, RunFacts>> {
    let rows: Vec<RunFacts> = sqlx::query_as(
        "select id, properties ->> 'ArtifactsUri' as artifacts_uri, \
           case when jsonb_typeof(metadata #> '{command,artifact_entries}') = 'number' \
             then (metadata #>> '{command,artifact_entries}')::bigint end as artifact_entries, \
           cache_components -> 'CacheInputs' as input_hashes \
         from step_runs where id = any($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// The property documents of the runs `ids`, by id.
pub async fn run_properties(conn: &mut PgConnection, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Value>> {
    let rows: Vec<(Uuid, Option<Value>)> = sqlx::query_as("select id, properties from step_runs where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, p)| (id, p.unwrap_or_else(|| Value::Object(Default::default()))))
        .collect())
}

/// The execution each of the runs `ids` ran in (for a reused step, the
/// execution that made its outputs), by run id.
pub async fn run_executions(conn: &mut PgConnection, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, Uuid>> {
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as("select id, execution_id from step_runs where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}
