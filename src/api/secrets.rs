//! `/v1/secrets`: store (create or replace), list and delete named
//! secrets. A value goes in and never comes out: responses carry names and
//! times only, and nothing here logs a request body.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    error::{ApiError, ApiResult, ErrorCode},
    extract::{JsonBody, Path, Query},
    pagination,
    routes::Routes,
    AppState,
};
use crate::{domain::names, store};

/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

pub fn router() -> Routes {
    Routes::new()
        .get("/v1/secrets", list)
        .put("/v1/secrets/{name}", store_secret)
        .delete("/v1/secrets/{name}", delete)
}

/// The body of a PUT. Its `Debug` would show the value: it has none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    value: String,
}

#[derive(Serialize)]
struct Secret {
    name: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct SecretList {
    secrets: Vec<Secret>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    next_token: Option<String>,
}

impl From<store::secrets::SecretInfo> for Secret {
    fn from(row: store::secrets::SecretInfo) -> Self {
        Secret {
            name: row.name,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn checked_name(name: &str) -> ApiResult<()> {
    names::check_secret_name(name).map_err(|m| ApiError::invalid("/name", m))
}

fn checked_value(value: &str) -> ApiResult<()> {
    if value.is_empty() {
        return Err(ApiError::invalid("/value", "value must not be empty"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "value is {} bytes long; a secret holds at most {MAX_VALUE_BYTES} bytes",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid(
            "/value",
            "value must not contain a NUL character (\\u0000): no process environment can hold it",
        ));
    }
    Ok(())
}

/// Store a secret: create it (201) or replace its value (200). The value is
/// encrypted at rest and never returned by any endpoint.
async fn store_secret(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PutRequest>,
) -> ApiResult<(StatusCode, Json<Secret>)> {
    checked_name(&name)?;
    checked_value(&req.value)?;
    let sealed = state.keyring.seal(&name, &req.value);
    let digest = state.keyring.digest(&req.value);
    let (info, created) = store::secrets::put(&state.db, &name, &sealed.nonce, &sealed.ciphertext, &digest).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(info.into())))
}

/// List secrets by name: names and times, never values.
async fn list(State(state): State<AppState>, Query(q): Query<PageQuery>) -> ApiResult<Json<SecretList>> {
    let limit = pagination::limit(q.limit)?;
    let after: Option<String> = pagination::decode(q.next_token.as_deref())?;
    let rows = store::secrets::list(&state.db, after.as_deref(), limit).await?;
    let next_token = pagination::next_token(&rows, limit, |r| r.name.clone());
    let secrets = rows.into_iter().map(Secret::from).collect();
    Ok(Json(SecretList { secrets, next_token }))
}

/// Delete a secret. Executions already started that use it fail the step
/// that needs it.
async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if store::secrets::delete(&state.db, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("secret {name:?} does not exist")))
    }
}
