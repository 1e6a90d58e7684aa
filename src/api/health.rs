//! Liveness and readiness probes.

use axum::{extract::State, Json};
use serde_json::{json, Value};

use super::{
    error::{ApiError, ApiResult, ErrorCode},
    routes::Routes,
    AppState,
};

pub fn router() -> Routes {
    Routes::new().get("/healthz", healthz).get("/readyz", readyz)
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
