//! Named secrets: sealed values (see `crate::secrets`), listed by name.
//! Nothing here sees a value in clear.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::StoreResult;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A sealed secret as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct SealedRow {
    pub name: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub digest: String,
}

/// Creates or replaces a secret; `true` when it was created. (`xmax` is 0
/// on a row this statement inserted, the updating transaction otherwise.)
pub async fn put(
    pool: &PgPool,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
    digest: &str,
) -> StoreResult<(SecretInfo, bool)> {
    let (name, created_at, updated_at, created): (String, DateTime<Utc>, DateTime<Utc>, bool) = sqlx::query_as(
        "insert into secrets (name, nonce, ciphertext, digest) values ($1, $2, $3, $4) \
         on conflict (name) do update set nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
         digest = excluded.digest, updated_at = now() \
         returning name, created_at, updated_at, (xmax = 0) as created",
    )
    .bind(name)
    .bind(nonce)
    .bind(ciphertext)
    .bind(digest)
    .fetch_one(pool)
    .await?;
    let info = SecretInfo {
        name,
        created_at,
        updated_at,
    };
    Ok((info, created))
}

/// Secrets ordered by name, after `after` (the previous page's last name).
pub async fn list(pool: &PgPool, after: Option<&str>, limit: i64) -> StoreResult<Vec<SecretInfo>> {
    Ok(sqlx::query_as::<_, SecretInfo>(
        "select name, created_at, updated_at from secrets \
         where ($1::text is null or name > $1) order by name limit $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Deletes a secret; `false` when there was none.
pub async fn delete(pool: &PgPool, name: &str) -> StoreResult<bool> {
    let result = sqlx::query("delete from secrets where name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// The sealed secrets among `names` (those that exist).
pub async fn sealed(conn: &mut PgConnection, names: &[String]) -> StoreResult<Vec<SealedRow>> {
    Ok(
        sqlx::query_as::<_, SealedRow>("select name, nonce, ciphertext, digest from secrets where name = any($1)")
            .bind(names)
            .fetch_all(conn)
            .await?,
    )
}

/// Which of `names` exist.
pub async fn existing(conn: &mut PgConnection, names: &[String]) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar("select name from secrets where name = any($1)")
        .bind(names)
        .fetch_all(conn)
        .await?)
}
