//! `/v1/tokens`: admins create, list and revoke API tokens. A token's text
//! is in the answer to its creation and nowhere else, ever.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    error::{ApiError, ApiResult},
    extract::{JsonBody, Path},
    routes::Routes,
    AppState,
};
use crate::{
    domain::auth::{self, Role},
    engine::tokens,
    store::tokens::TokenRow,
};

pub fn router() -> Routes {
    Routes::new()
        .get("/v1/tokens", list)
        .post("/v1/tokens", create)
        .delete("/v1/tokens/{name}", revoke)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    role: String,
}

#[derive(Serialize)]
struct Token {
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for Token {
    fn from(row: TokenRow) -> Token {
        Token {
            name: row.name,
            role: row.role,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    info: Token,
    /// Shown once: only its digest is kept.
    token: String,
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<Token>,
}

async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    auth::check_token_name(&request.name).map_err(|m| ApiError::invalid("/name", m))?;
    let role: Role = request
        .role
        .parse()
        .map_err(|m: String| ApiError::invalid("/role", m))?;
    let (row, token) = tokens::create(&state.db, &request.name, role).await?;
    tracing::info!(name = %row.name, role = %row.role, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            info: row.into(),
            token,
        }),
    ))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<TokenList>> {
    let rows = tokens::list(&state.db).await?;
    Ok(Json(TokenList {
        tokens: rows.into_iter().map(Token::from).collect(),
    }))
}

async fn revoke(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    tokens::revoke(&state.db, &name).await?;
    tracing::info!(%name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}
