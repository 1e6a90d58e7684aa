//! API tokens: creation (the only moment a token's text exists outside its
//! holder), authentication, revocation, and the first admin token a new
//! deployment starts with. Shared by the API (`/v1/tokens`), the CLI
//! (`stepwise token ...`) and start-up.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use sqlx::PgPool;

use crate::{
    config::Config,
    domain::auth::{self, Role},
    store::{self, tokens::TokenRow, StoreError, StoreResult},
};

/// Who made a request: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The name of the token created at first start or set by `auth.admin_token`.
pub const FIRST_ADMIN: &str = "admin";

/// The file, in the data directory, the first admin token is written to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A new random token's text.
pub fn generate() -> String {
    let mut random = [0u8; auth::TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random).expect("the operating system provides randomness");
    auth::token_from_random(&random)
}

/// The holder of `token`, or None when it is unknown or revoked. Records
/// the use at most once a minute per token.
pub async fn authenticate(db: &PgPool, token: &str) -> StoreResult<Option<Principal>> {
    if token.is_empty() || token.len() > auth::MAX_TOKEN_LEN {
        return Ok(None);
    }
    let Some(holder) = store::tokens::find_active(db, &auth::token_digest(token)).await? else {
        return Ok(None);
    };
    if holder.use_is_stale {
        // Losing this write loses only a time stamp.
        if let Err(e) = store::tokens::record_use(db, holder.id).await {
            tracing::debug!(error = %e, "could not record a token's use");
        }
    }
    // The table's check constraint admits only the four roles.
    let Ok(role) = holder.role.parse() else {
        return Ok(None);
    };
    Ok(Some(Principal {
        name: holder.name,
        role,
    }))
}

/// Creates a token and returns it with its text, which is never stored.
pub async fn create(db: &PgPool, name: &str, role: Role) -> StoreResult<(TokenRow, String)> {
    let token = generate();
    let mut conn = db.acquire().await?;
    let row = store::tokens::insert(&mut conn, name, role.as_str(), &auth::token_digest(&token)).await?;
    Ok((row, token))
}

pub async fn list(db: &PgPool) -> StoreResult<Vec<TokenRow>> {
    store::tokens::list(db).await
}

/// Revokes the active token named `name`, at once for every later request.
/// The last admin token is not revoked: nobody could then manage tokens
/// over the API (`stepwise token create` on the server still could).
pub async fn revoke(db: &PgPool, name: &str) -> StoreResult<()> {
    let mut tx = db.begin().await?;
    let admins = store::tokens::lock_active_admins(&mut tx).await?;
    let Some(role) = store::tokens::lock_active(&mut tx, name).await? else {
        return Err(StoreError::NotFound(format!("no active token is named {name:?}")));
    };
    if role == Role::Admin.as_str() && admins.len() <= 1 {
        return Err(StoreError::Conflict(format!(
            "{name:?} is the last admin token; create another admin token before revoking it"
        )));
    }
    store::tokens::revoke(&mut tx, name).await?;
    tx.commit().await?;
    Ok(())
}

/// At start, with authentication on: installs `auth.admin_token` when it is
/// set, or else creates the first admin token when no token is active and
/// writes it to `<data_dir>/admin.token` (mode 0600). The token itself is
/// never logged.
pub async fn bootstrap(db: &PgPool, config: &Config) -> anyhow::Result<()> {
    if !config.auth.enabled {
        return Ok(());
    }
    let mut tx = store::tokens::begin_bootstrap(db).await?;
    if !config.auth.admin_token.is_empty() {
        let digest = auth::token_digest(&config.auth.admin_token);
        if !store::tokens::digest_is_active(&mut tx, &digest).await? {
            // The configured token replaces an earlier one of the same name.
            let replaced = store::tokens::revoke(&mut tx, FIRST_ADMIN).await?;
            store::tokens::insert(&mut tx, FIRST_ADMIN, Role::Admin.as_str(), &digest).await?;
            tx.commit().await?;
            tracing::info!(
                name = FIRST_ADMIN,
                replaced,
                "installed the admin token given by auth.admin_token"
            );
        }
        return Ok(());
    }
    if store::tokens::any_active(&mut tx).await? {
        // A new data directory on a database that has tokens (a second
        // machine, a moved directory) gets no admin.token: say where a
        // token comes from instead of leaving a user looking for the file.
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        if !path.exists() {
            tracing::info!(
                file = %path.display(),
                "API tokens already exist in the database, so no admin token was written to this file; \
                 use a token you have, or create one with `stepwise token create --name NAME --role ROLE`"
            );
        }
        return Ok(());
    }
    let token = generate();
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, &token)
        .map_err(|e| anyhow::anyhow!("cannot write the first admin token to {}: {e}", path.display()))?;
    store::tokens::insert(&mut tx, FIRST_ADMIN, Role::Admin.as_str(), &auth::token_digest(&token)).await?;
    tx.commit().await?;
    tracing::warn!(
        file = %path.display(),
        "no API token existed: created the admin token {FIRST_ADMIN:?} and wrote it to this file (readable by this user only)"
    );
    Ok(())
}

/// Writes `text` to `path` readable by its owner only: a new file is
/// created 0600 and renamed over the old one, so no reader ever sees a
/// partial token or wider permissions.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("token.partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}
