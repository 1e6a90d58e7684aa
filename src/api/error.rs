//! The one error shape of the API:
//! `{"error": {"code", "message", "details": [{"path", "message"}]}}`.
//! Every rejection (bad JSON, unknown route, wrong method, oversized body,
//! panics) is turned into it; a 5xx is logged with its cause and answered
//! generically.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use crate::domain::Issue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    ValidationError,
    NotFound,
    Conflict,
    MethodNotAllowed,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthorized,
    Forbidden,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::ValidationError => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<Issue>,
    /// No pooled connection came free in time: `super::name_database_cause`
    /// finds out why and rewrites the answer.
    pool_timed_out: bool,
}

/// Marks a response answering a pool time-out whose cause is not known yet.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimedOut;

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    details: &'a [Issue],
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
            pool_timed_out: false,
        }
    }

    pub fn validation(message: impl Into<String>, details: Vec<Issue>) -> Self {
        ApiError {
            code: ErrorCode::ValidationError,
            message: message.into(),
            details,
            pool_timed_out: false,
        }
    }

    /// A 400 with a single detail at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::validation(message.clone(), vec![Issue::new(path, message)])
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Conflict, message)
    }

    /// An unexpected failure: logged here with its cause chain, answered
    /// without details so nothing internal leaks.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Database(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached is a 503 the client may retry; any
    /// other database error is ours (500).
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            // Logged with its cause by `name_database_cause`.
            let mut error = ApiError::new(
                ErrorCode::Unavailable,
                "no database connection could be had; try again shortly",
            );
            error.pool_timed_out = true;
            return error;
        }
        if crate::store::is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "the database is not reachable; try again shortly",
            )
        } else {
            ApiError::internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: &self.details,
            },
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"stepwise\""),
            );
        }
        if self.pool_timed_out {
            response.extensions_mut().insert(PoolTimedOut);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
