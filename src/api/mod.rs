//! The REST API: one module per resource, each exposing `router()`. This
//! module assembles them with the cross-cutting layers: the request guard
//! and authorization (`auth`), body limit, panic catching, request tracing,
//! and the error-shaped fallbacks for unknown routes and methods.

pub mod auth;
mod callbacks;
pub mod error;
mod executions;
pub mod extract;
mod health;
mod log_follow;
mod pagination;
mod pipelines;
pub mod routes;
mod secrets;
pub mod server;
mod steps;
mod tokens;
pub mod ui;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, Method, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use sqlx::PgPool;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use self::{
    error::{ApiError, ErrorCode},
    routes::Routes,
};
use crate::{
    config::Config, engine::definitions::Definitions, ids::Arns, notify::Notifier, store::diagnosis::Diagnosis,
};

/// The OpenAPI document, committed at the repository root and served as is;
/// `tests/it/openapi.rs` checks every response of the test suite against it.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub arns: Arns,
    pub notifier: Notifier,
    pub definitions: Definitions,
    /// Fires when the server begins to shut down: event streams send a
    /// final `shutdown` event and end, long polls answer at once.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Names the cause when no database connection can be had.
    pub diagnosis: Diagnosis,
    /// The names a request's `Host` may say.
    pub allowed_hosts: auth::AllowedHosts,
    /// Seals secrets' values and computes their keyed digests.
    pub keyring: crate::secrets::Keyring,
}

/// Every route of the API and the web UI, before the layers and the state:
/// [`router`] serves exactly these, and their [`Routes::table`] is the
/// list of every method and path it serves.
pub fn routes() -> Routes {
    Routes::new()
        .merge(health::router())
        .merge(pipelines::router())
        .merge(executions::router())
        .merge(steps::router())
        .merge(callbacks::router())
        .merge(tokens::router())
        .merge(secrets::router())
        .merge(ui::router())
        .get("/openapi.yaml", openapi)
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.api.max_body_bytes;
    routes()
        .into_router()
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authorize))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), name_database_cause))
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked");
            ApiError::new(ErrorCode::Internal, "internal error").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of a request's trace: method and path, with a callback's token
/// (a credential in the path) left out.
fn request_span(request: &Request) -> tracing::Span {
    let path = request.uri().path();
    let path = match path.strip_prefix("/v1/callbacks/") {
        Some(rest) => format!("/v1/callbacks/***/{}", rest.rsplit('/').next().unwrap_or("")),
        None => path.to_string(),
    };
    tracing::debug_span!("request", method = %request.method(), %path)
}

/// A 503 for a pool time-out says why no connection could be had (this
/// server's connections all in use, the database refusing clients, or not
/// reachable) instead of "timed out", and the cause is logged.
async fn name_database_cause(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.extensions().get::<error::PoolTimedOut>().is_none() {
        return response;
    }
    match state.diagnosis.explain(&sqlx::Error::PoolTimedOut).await {
        Some(cause) => {
            tracing::warn!(%cause, "no database connection for a request");
            ApiError::new(ErrorCode::Unavailable, cause.client_message()).into_response()
        }
        None => response,
    }
}

/// The OpenAPI 3.0 description of this API.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
