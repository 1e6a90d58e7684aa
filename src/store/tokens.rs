//! API tokens, kept as SHA-256 digests (`api_tokens`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{is_unique_violation, StoreError, StoreResult};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The active token with this digest, if any.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Holder {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    /// Whether `last_used_at` is more than a minute old (or unset): the
    /// caller then records the use, so a busy token costs one write a minute.
    pub use_is_stale: bool,
}

const COLUMNS: &str = "name, role, created_at, last_used_at, revoked_at";

/// Looks a bearer token up by its digest; revoked tokens are not found.
pub async fn find_active(db: &PgPool, digest: &[u8]) -> StoreResult<Option<Holder>> {
    Ok(sqlx::query_as::<_, Holder>(
        "select id, name, role, \
         coalesce(last_used_at < now() - interval '1 minute', true) as use_is_stale \
         from api_tokens where token_digest = $1 and revoked_at is null",
    )
    .bind(digest)
    .fetch_optional(db)
    .await?)
}

pub async fn record_use(db: &PgPool, id: Uuid) -> StoreResult<()> {
    sqlx::query("update api_tokens set last_used_at = now() where id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Inserts an active token; a 409 when an active token has the name.
pub async fn insert(conn: &mut PgConnection, name: &str, role: &str, digest: &[u8]) -> StoreResult<TokenRow> {
    sqlx::query_as::<_, TokenRow>(&format!(
        "insert into api_tokens (id, name, role, token_digest) values ($1, $2, $3, $4) returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role)
    .bind(digest)
    .fetch_one(conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!(
                "an active token named {name:?} exists; revoke it first or pick another name"
            ))
        } else {
            e.into()
        }
    })
}

/// Every token, active ones first, newest first.
pub async fn list(db: &PgPool) -> StoreResult<Vec<TokenRow>> {
    Ok(sqlx::query_as::<_, TokenRow>(&format!(
        "select {COLUMNS} from api_tokens order by revoked_at is not null, created_at desc, name limit 10000"
    ))
    .fetch_all(db)
    .await?)
}

/// Whether any token is active.
pub async fn any_active(conn: &mut PgConnection) -> StoreResult<bool> {
    Ok(
        sqlx::query_scalar::<_, bool>("select exists (select 1 from api_tokens where revoked_at is null)")
            .fetch_one(conn)
            .await?,
    )
}

/// Whether an active token has this digest.
pub async fn digest_is_active(conn: &mut PgConnection, digest: &[u8]) -> StoreResult<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "select exists (select 1 from api_tokens where token_digest = $1 and revoked_at is null)",
    )
    .bind(digest)
    .fetch_one(conn)
    .await?)
}

/// A transaction holding the token bootstrap lock, so that two processes
/// starting at once create one first admin token between them.
pub async fn begin_bootstrap(db: &PgPool) -> StoreResult<Transaction<'static, Postgres>> {
    let mut tx = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('stepwise.api_tokens.bootstrap'))")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The active admin tokens' names, locked until the transaction ends, so
/// that two revocations cannot each leave the other as the last admin.
pub async fn lock_active_admins(conn: &mut PgConnection) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar::<_, String>(
        "select name from api_tokens where role = 'admin' and revoked_at is null order by name for update",
    )
    .fetch_all(conn)
    .await?)
}

/// The role of the active token named `name`, locked.
pub async fn lock_active(conn: &mut PgConnection, name: &str) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query_scalar::<_, String>(
            "select role from api_tokens where name = $1 and revoked_at is null for update",
        )
        .bind(name)
        .fetch_optional(conn)
        .await?,
    )
}

/// Revokes the active token named `name`; false when there is none.
pub async fn revoke(conn: &mut PgConnection, name: &str) -> StoreResult<bool> {
    let done = sqlx::query("update api_tokens set revoked_at = now() where name = $1 and revoked_at is null")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
