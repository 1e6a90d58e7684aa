//! Liveness and readiness probes.

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};

use super::{
    error::{ApiError, ApiResult, ErrorCode},
    AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// 200 once the server accepts requests.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 while the database answers, 503 otherwise.
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let probe = crate::store::ping(&state.db);
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ok"}))),
        _ => Err(ApiError::new(ErrorCode::Unavailable, "the database is not reachable")),
    }
}
