//! Pipelines and their immutable versions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{is_unique_violation, StoreError, StoreResult};

/// A pipeline with one of its versions (the latest unless asked otherwise).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PipelineRow {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub max_parallel_steps: Option<i32>,
    pub version: i32,
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version_created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub version: i32,
    pub definition: Value,
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub max_parallel_steps: Option<i32>,
    pub created_at: DateTime<Utc>,
}

pub struct NewVersion<'a> {
    pub definition: &'a Value,
    pub description: Option<&'a str>,
    pub display_name: Option<&'a str>,
    pub max_parallel_steps: Option<i32>,
}

const SELECT_WITH_VERSION: &str = "select p.id, p.name, v.description, v.display_name, v.max_parallel_steps, \
     v.version, v.definition, p.created_at, p.updated_at, v.created_at as version_created_at \
     from pipelines p join pipeline_versions v on v.pipeline_id = p.id";

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("pipeline {name:?} does not exist"))
}

pub async fn create(pool: &PgPool, name: &str, new: NewVersion<'_>) -> StoreResult<PipelineRow> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "insert into pipelines (id, name, description, display_name, max_parallel_steps, latest_version) \
         values ($1, $2, $3, $4, $5, 1)",
    )
    .bind(id)
    .bind(name)
    .bind(new.description)
    .bind(new.display_name)
    .bind(new.max_parallel_steps)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::Conflict(format!("pipeline {name:?} already exists")))
        }
        other => other?,
    };
    insert_version(&mut tx, id, 1, &new).await?;
    let row = get_version_in(&mut tx, name, None).await?;
    tx.commit().await?;
    Ok(row)
}

async fn insert_version(conn: &mut PgConnection, id: Uuid, version: i32, new: &NewVersion<'_>) -> StoreResult<()> {
    sqlx::query(
        "insert into pipeline_versions (pipeline_id, version, definition, description, display_name, max_parallel_steps) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(version)
    .bind(new.definition)
    .bind(new.description)
    .bind(new.display_name)
    .bind(new.max_parallel_steps)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends a version. Fields not given keep the previous version's value.
pub async fn update(pool: &PgPool, name: &str, new: NewVersion<'_>) -> StoreResult<PipelineRow> {
    let mut tx = pool.begin().await?;
    // The pipeline row is locked first (see `delete` for the lock order):
    // `for no key update` serialises concurrent updates, so versions stay
    // gapless, and waits for a delete (after which the pipeline is not
    // found) without blocking starts, which hold `for key share`.
    let locked: Option<(Uuid, i32)> =
        sqlx::query_as("select id, latest_version from pipelines where name = $1 for no key update")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, latest)) = locked else {
        return Err(not_found(name));
    };
    let current = get_version_in(&mut tx, name, Some(latest)).await?;
    let version = latest + 1;
    let merged = NewVersion {
        definition: new.definition,
        description: new.description.or(current.description.as_deref()),
        display_name: new.display_name.or(current.display_name.as_deref()),
        max_parallel_steps: new.max_parallel_steps.or(current.max_parallel_steps),
    };
    insert_version(&mut tx, id, version, &merged).await?;
    sqlx::query(
        "update pipelines set latest_version = $2, description = $3, display_name = $4, \
         max_parallel_steps = $5, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(version)
    .bind(merged.description)
    .bind(merged.display_name)
    .bind(merged.max_parallel_steps)
    .execute(&mut *tx)
    .await?;
    let row = get_version_in(&mut tx, name, Some(version)).await?;
    tx.commit().await?;
    Ok(row)
}

/// The pipeline with version `version`, or its latest.
pub async fn get_version_in(conn: &mut PgConnection, name: &str, version: Option<i32>) -> StoreResult<PipelineRow> {
    let sql = format!("{SELECT_WITH_VERSION} where p.name = $1 and v.version = coalesce($2, p.latest_version)");
    let row = sqlx::query_as::<_, PipelineRow>(&sql)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        return Ok(row);
    }
    let latest: Option<i32> = sqlx::query_scalar("select latest_version from pipelines where name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match (latest, version) {
        (Some(latest), Some(v)) => Err(StoreError::NotFound(format!(
            "pipeline {name:?} has no version {v} (latest is {latest})"
        ))),
        _ => Err(not_found(name)),
    }
}

pub async fn get(pool: &PgPool, name: &str, version: Option<i32>) -> StoreResult<PipelineRow> {
    let mut conn = pool.acquire().await?;
    get_version_in(&mut conn, name, version).await
}

/// Pipelines ordered by name, after `after` (the previous page's last name).
pub async fn list(
    pool: &PgPool,
    name_prefix: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> StoreResult<Vec<PipelineRow>> {
    let sql = format!(
        "{SELECT_WITH_VERSION} where v.version = p.latest_version \
         and ($1::text is null or starts_with(p.name, $1)) and ($2::text is null or p.name > $2) \
         order by p.name limit $3"
    );
    Ok(sqlx::query_as::<_, PipelineRow>(&sql)
        .bind(name_prefix)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Versions of a pipeline in ascending order, after version `after`.
pub async fn list_versions(pool: &PgPool, name: &str, after: Option<i32>, limit: i64) -> StoreResult<Vec<VersionRow>> {
    let mut conn = pool.acquire().await?;
    let pipeline = get_version_in(&mut conn, name, None).await?;
    Ok(sqlx::query_as::<_, VersionRow>(
        "select version, definition, description, display_name, max_parallel_steps, created_at \
         from pipeline_versions where pipeline_id = $1 and version > coalesce($2, 0) order by version limit $3",
    )
    .bind(pipeline.id)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Deletes a pipeline with its versions, finished executions and their
/// tombstones; refused while any of its executions is still running.
/// Returns the ids of the executions deleted, whose files the caller
/// removes once this has committed.
///
/// Lock order: the pipeline row, then its executions. The pipeline row is
/// taken `for update`, which conflicts with the `for key share` that starts
/// and plans hold on it (`head_in`) and the `for no key update` of `update`:
/// a start that got there first commits its execution before the delete
/// looks (and the delete is refused), a start that comes later finds no
/// pipeline (404), never a foreign-key violation. The executions are locked
/// (in id order) before their statuses are read, so one that a concurrent
/// retry has just made run again is seen running, and a retry that comes
/// later finds it gone. `for no key update` conflicts with every status
/// change but not with the `for key share` that a worker's foreign-key
/// checks take on a running execution's row: a claim never waits for a
/// delete (which is refused anyway while something runs).
pub async fn delete(pool: &PgPool, name: &str) -> StoreResult<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar("select id from pipelines where name = $1 for update")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else { return Err(not_found(name)) };
    let executions: Vec<(Uuid, String)> =
        sqlx::query_as("select id, status from executions where pipeline_id = $1 order by id for no key update")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let running = executions
        .iter()
        .filter(|(_, status)| matches!(status.as_str(), "Executing" | "Stopping"))
        .count();
    if running > 0 {
        return Err(StoreError::Conflict(format!(
            "pipeline {name:?} has {running} running execution(s); stop them or wait for them to finish"
        )));
    }
    // Retention may have removed some of them meanwhile: their tombstones
    // are read after the lock above, so none is left behind.
    sqlx::query("delete from execution_tombstones where pipeline_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from pipelines where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(executions.into_iter().map(|(id, _)| id).collect())
}

/// A pipeline version without its definition document.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PipelineHead {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    pub max_parallel_steps: Option<i32>,
}

/// The pipeline's version `version` (or its latest), without the definition,
/// for a start or a plan: the pipeline row is held `for key share` until the
/// caller's transaction ends, so the pipeline and its versions cannot be
/// deleted under it (see `delete`); updates and other starts are not held up.
pub async fn head_in(conn: &mut PgConnection, name: &str, version: Option<i32>) -> StoreResult<PipelineHead> {
    let head = sqlx::query_as::<_, PipelineHead>(
        "select p.id, p.name, v.version, v.max_parallel_steps from pipelines p \
         join pipeline_versions v on v.pipeline_id = p.id \
         where p.name = $1 and v.version = coalesce($2, p.latest_version) \
         for key share of p",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    match head {
        Some(head) => Ok(head),
        // The full lookup words the not-found error.
        None => get_version_in(conn, name, version).await.map(|row| PipelineHead {
            id: row.id,
            name: row.name,
            version: row.version,
            max_parallel_steps: row.max_parallel_steps,
        }),
    }
}

pub async fn definition_of(conn: &mut PgConnection, id: Uuid, version: i32) -> StoreResult<Value> {
    Ok(
        sqlx::query_scalar("select definition from pipeline_versions where pipeline_id = $1 and version = $2")
            .bind(id)
            .bind(version)
            .fetch_one(conn)
            .await?,
    )
}
