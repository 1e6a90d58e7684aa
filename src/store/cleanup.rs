//! What a Cleanup step reads: the steps it names, as the execution shows
//! them (a step reused from a source execution has no row of its own).

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreResult;

/// A step a Cleanup step names (or a step of an iteration of a ForEach it
/// names), with what tells whether its artifacts are
/// this execution's own.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CleanupSource {
    pub step_name: String,
    pub step_type: String,
    /// For a step of a ForEach iteration: its ForEach.
    pub parent: Option<String>,
    pub status: String,
    pub cache_hit: Option<Value>,
    pub reused_from: Option<Value>,
}

pub async fn sources(pool: &PgPool, execution_id: Uuid, names: &[String]) -> StoreResult<Vec<CleanupSource>> {
    Ok(sqlx::query_as::<_, CleanupSource>(
        "select s.step_name, s.step_type, s.parent, s.status, s.cache_hit, s.reused_from from execution_steps s \
         where s.execution_id = $1 and (s.step_name = any($2) or s.parent = any($2)) order by s.position",
    )
    .bind(execution_id)
    .bind(names)
    .fetch_all(pool)
    .await?)
}
