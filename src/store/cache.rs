//! Cache entries: successful runs that ran with caching on. Lookups go
//! through the partial index on `cache_entry`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::StoreResult;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub pipeline_name: String,
    pub properties: Option<Value>,
    pub metadata: Value,
    pub cache_key: Option<String>,
    pub cache_components: Option<Value>,
    pub ended_at: Option<DateTime<Utc>>,
}

const ENTRY_COLUMNS: &str = "s.id, s.execution_id, p.name as pipeline_name, s.properties, s.metadata, \
    s.cache_key, s.cache_components, s.ended_at";

/// Entries of `step` with `key`, newest first.
pub async fn entries_with_key(
    conn: &mut PgConnection,
    pipeline_id: Uuid,
    step: &str,
    key: &str,
    limit: i64,
) -> StoreResult<Vec<Entry>> {
    Ok(sqlx::query_as::<_, Entry>(&format!(
        "select {ENTRY_COLUMNS} from step_runs s join pipelines p on p.id = s.pipeline_id \
         where s.pipeline_id = $1 and coalesce(s.local_name, s.step_name) = $2 and s.cache_key = $3 and s.cache_entry \
         order by s.ended_at desc limit $4"
    ))
    .bind(pipeline_id)
    .bind(step)
    .bind(key)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The newest entry of `step` whatever its key, to explain a miss.
pub async fn nearest_entry(conn: &mut PgConnection, pipeline_id: Uuid, step: &str) -> StoreResult<Option<Entry>> {
    Ok(sqlx::query_as::<_, Entry>(&format!(
        "select {ENTRY_COLUMNS} from step_runs s join pipelines p on p.id = s.pipeline_id \
         where s.pipeline_id = $1 and coalesce(s.local_name, s.step_name) = $2 and s.cache_entry order by s.ended_at desc limit 1"
    ))
    .bind(pipeline_id)
    .bind(step)
    .fetch_optional(conn)
    .await?)
}

pub struct KeyRecord<'a> {
    pub key: &'a str,
    pub components: &'a Value,
    pub status: &'a str,
    pub miss_reason: Option<&'a str>,
    pub warnings: &'a Value,
    pub hit: Option<&'a Value>,
}

/// Records the cache decision of the current attempt (fenced by attempt).
pub async fn record(pool: &PgPool, id: Uuid, attempt: i32, record: &KeyRecord<'_>) -> StoreResult<bool> {
    Ok(sqlx::query(
        "update step_runs set cache_key = $3, cache_components = $4, cache_status = $5, cache_miss_reason = $6, \
         cache_warnings = $7, cache_hit = $8 where id = $1 and attempt = $2 and status = 'Executing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(record.key)
    .bind(record.components)
    .bind(record.status)
    .bind(record.miss_reason)
    .bind(record.warnings)
    .bind(record.hit)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Purges the entries of a pipeline (of one step when given). The runs stay
/// in history; they just stop being entries.
pub async fn purge(pool: &PgPool, pipeline_id: Uuid, step: Option<&str>) -> StoreResult<u64> {
    Ok(sqlx::query(
        "update step_runs set cache_entry = false where pipeline_id = $1 and cache_entry \
         and ($2::text is null or coalesce(local_name, step_name) = $2)",
    )
    .bind(pipeline_id)
    .bind(step)
    .execute(pool)
    .await?
    .rows_affected())
}
