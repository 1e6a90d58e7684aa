//! `/v1/pipelines`: create, list, describe, update (a new version), delete,
//! and versions.

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    error::{ApiError, ApiResult},
    extract::{JsonBody, Path, Query},
    pagination,
    routes::Routes,
    AppState,
};
use crate::{
    domain::{definition::parse_definition, names},
    store::{
        self,
        pipelines::{NewVersion, PipelineRow, VersionRow},
    },
};

pub fn router() -> Routes {
    Routes::new()
        .get("/v1/pipelines", list)
        .post("/v1/pipelines", create)
        .get("/v1/pipelines/{name}", describe)
        .put("/v1/pipelines/{name}", update)
        .delete("/v1/pipelines/{name}", delete)
        .get("/v1/pipelines/{name}/versions", list_versions)
        .get("/v1/pipelines/{name}/versions/{version}", get_version)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    definition: Value,
    description: Option<String>,
    display_name: Option<String>,
    max_parallel_steps: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    definition: Value,
    description: Option<String>,
    display_name: Option<String>,
    max_parallel_steps: Option<i64>,
}

#[derive(Serialize)]
pub struct Pipeline {
    name: String,
    pipeline_arn: String,
    version: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<Value>,
    description: Option<String>,
    display_name: Option<String>,
    max_parallel_steps: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct PipelineList {
    pipelines: Vec<Pipeline>,
    next_token: Option<String>,
}

#[derive(Serialize)]
struct Version {
    name: String,
    pipeline_arn: String,
    version: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<Value>,
    description: Option<String>,
    display_name: Option<String>,
    max_parallel_steps: Option<i32>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct VersionList {
    versions: Vec<Version>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    name_prefix: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    next_token: Option<String>,
}

impl AppState {
    fn pipeline_view(&self, row: PipelineRow, with_definition: bool) -> Pipeline {
        Pipeline {
            pipeline_arn: self.arns.pipeline(&row.name),
            name: row.name,
            version: row.version,
            definition: with_definition.then_some(row.definition),
            description: row.description,
            display_name: row.display_name,
            max_parallel_steps: row.max_parallel_steps,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn version_view(&self, name: &str, row: VersionRow, with_definition: bool) -> Version {
        Version {
            name: name.to_string(),
            pipeline_arn: self.arns.pipeline(name),
            version: row.version,
            definition: with_definition.then_some(row.definition),
            description: row.description,
            display_name: row.display_name,
            max_parallel_steps: row.max_parallel_steps,
            created_at: row.created_at,
        }
    }
}

/// Validates a definition and returns its normalized document (a JSON
/// string is parsed into the object it holds).
fn checked_definition(definition: &Value) -> ApiResult<Value> {
    parse_definition(definition).map(|d| d.document).map_err(|issues| {
        let message = match issues.as_slice() {
            [one] if one.path.is_empty() => format!("the definition is invalid: {}", one.message),
            [one] => format!("the definition is invalid: {}: {}", one.path, one.message),
            many => format!("the definition is invalid: {} problems, see details", many.len()),
        };
        ApiError::validation(message, issues)
    })
}

fn checked_max_parallel(value: Option<i64>) -> ApiResult<Option<i32>> {
    match value {
        None => Ok(None),
        Some(n) if (1..=100_000).contains(&n) => Ok(Some(n as i32)),
        Some(n) => Err(ApiError::invalid(
            "/max_parallel_steps",
            format!("max_parallel_steps must be between 1 and 100000, got {n}"),
        )),
    }
}

fn checked_name(name: &str) -> ApiResult<()> {
    names::check_pipeline_name(name).map_err(|m| ApiError::invalid("/name", m))
}

/// Create a pipeline; its definition becomes version 1.
async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> ApiResult<(StatusCode, Json<Pipeline>)> {
    checked_name(&req.name)?;
    let max_parallel_steps = checked_max_parallel(req.max_parallel_steps)?;
    let definition = checked_definition(&req.definition)?;
    let row = store::pipelines::create(
        &state.db,
        &req.name,
        NewVersion {
            definition: &definition,
            description: req.description.as_deref(),
            display_name: req.display_name.as_deref(),
            max_parallel_steps,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(state.pipeline_view(row, true))))
}

/// List pipelines by name, optionally those whose name starts with `name_prefix`.
async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<PipelineList>> {
    let limit = pagination::limit(q.limit)?;
    let after: Option<String> = pagination::decode(q.next_token.as_deref())?;
    let rows = store::pipelines::list(&state.db, q.name_prefix.as_deref(), after.as_deref(), limit).await?;
    let next_token = pagination::next_token(&rows, limit, |r| r.name.clone());
    let pipelines = rows.into_iter().map(|r| state.pipeline_view(r, false)).collect();
    Ok(Json(PipelineList { pipelines, next_token }))
}

/// Describe a pipeline: its latest version with the definition.
async fn describe(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Pipeline>> {
    let row = store::pipelines::get(&state.db, &name, None).await?;
    Ok(Json(state.pipeline_view(row, true)))
}

/// Update a pipeline: the definition becomes a new immutable version.
async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateRequest>,
) -> ApiResult<Json<Pipeline>> {
    let max_parallel_steps = checked_max_parallel(req.max_parallel_steps)?;
    let definition = checked_definition(&req.definition)?;
    let row = store::pipelines::update(
        &state.db,
        &name,
        NewVersion {
            definition: &definition,
            description: req.description.as_deref(),
            display_name: req.display_name.as_deref(),
            max_parallel_steps,
        },
    )
    .await?;
    Ok(Json(state.pipeline_view(row, true)))
}

/// Delete a pipeline with its versions, executions and their files (logs,
/// artifacts, scratch directories); 409 while one runs.
async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    crate::engine::retention::delete_pipeline(&state.db, &state.config.data_dir, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a pipeline's versions, oldest first.
async fn list_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<VersionList>> {
    let limit = pagination::limit(q.limit)?;
    let after: Option<i32> = pagination::decode(q.next_token.as_deref())?;
    let rows = store::pipelines::list_versions(&state.db, &name, after, limit).await?;
    let next_token = pagination::next_token(&rows, limit, |r| r.version);
    let versions = rows.into_iter().map(|r| state.version_view(&name, r, false)).collect();
    Ok(Json(VersionList { versions, next_token }))
}

/// One version of a pipeline with its definition.
async fn get_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Version>> {
    let version: i32 = version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::invalid(
            "/version",
            format!("version must be a positive integer, got {version:?}"),
        )
    })?;
    let row = store::pipelines::get(&state.db, &name, Some(version)).await?;
    let view = Version {
        name: row.name.clone(),
        pipeline_arn: state.arns.pipeline(&row.name),
        version: row.version,
        definition: Some(row.definition),
        description: row.description,
        display_name: row.display_name,
        max_parallel_steps: row.max_parallel_steps,
        created_at: row.version_created_at,
    };
    Ok(Json(view))
}
