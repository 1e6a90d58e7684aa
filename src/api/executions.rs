//! Executions: start (plain or selective), list, describe with long poll,
//! stop, retry, parameters, definition snapshot, and server-sent events.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::sse::{Event, KeepAlive, Sse},
    Json,
};
use chrono::{DateTime, Datelike, Utc};
use futures::{stream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, ApiResult},
    extract::{JsonBody, Path, Query},
    pagination,
    routes::Routes,
    AppState,
};
use crate::{
    domain::selective::SelectedSteps,
    engine::{
        self,
        decide::Settings,
        plan::{self, ExecutionPlan},
        request::{CacheMode, SelectiveRequest, StartError, StartRequest},
        start,
    },
    notify,
    store::{
        self,
        executions::{EventRow, ExecutionRow},
    },
};

pub fn router() -> Routes {
    Routes::new()
        .post("/v1/pipelines/{name}/executions", start)
        .get("/v1/pipelines/{name}/executions", list)
        .post("/v1/pipelines/{name}/executions/plan", plan)
        .delete("/v1/pipelines/{name}/cache", purge_cache)
        .get("/v1/executions/{execution}", describe)
        .post("/v1/executions/{execution}/stop", stop)
        .post("/v1/executions/{execution}/retry", retry)
        .get("/v1/executions/{execution}/parameters", parameters)
        .get("/v1/executions/{execution}/definition", definition)
        .get("/v1/executions/{execution}/events", events)
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    parameters: Option<Map<String, Value>>,
    pipeline_version: Option<i32>,
    client_request_token: Option<String>,
    selective_execution: Option<SelectiveBody>,
    cache_mode: Option<CacheMode>,
    max_parallel_steps: Option<i64>,
    display_name: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectiveBody {
    source_execution: Option<String>,
    /// Read by the domain's own visitor, whose message says what is
    /// accepted (an untagged enum would answer with its Rust name).
    selected_steps: SelectedSteps,
    #[serde(default)]
    inherit_parameters: bool,
}

impl StartBody {
    /// Checks the request's own fields; the selection is checked against the
    /// pipeline by the engine.
    pub fn into_request(self) -> ApiResult<StartRequest> {
        let canonical = serde_jcs::to_string(&self).map_err(ApiError::internal)?;
        let request_hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
        };
        if let Some(token) = &self.client_request_token {
            if token.is_empty() || token.chars().count() > 128 {
                return Err(ApiError::invalid(
                    "/client_request_token",
                    "client_request_token must be 1 to 128 characters",
                ));
            }
        }
        if let Some(v) = self.pipeline_version {
            if v < 1 {
                return Err(ApiError::invalid(
                    "/pipeline_version",
                    format!("pipeline_version must be at least 1, got {v}"),
                ));
            }
        }
        let max_parallel_steps = match self.max_parallel_steps {
            None => None,
            Some(n) if (1..=100_000).contains(&n) => Some(n as i32),
            Some(n) => {
                return Err(ApiError::invalid(
                    "/max_parallel_steps",
                    format!("max_parallel_steps must be between 1 and 100000, got {n}"),
                ))
            }
        };
        let selective_execution = match self.selective_execution {
            None => None,
            Some(s) => Some(SelectiveRequest {
                source_execution: s.source_execution,
                selected_steps: s.selected_steps,
                inherit_parameters: s.inherit_parameters,
            }),
        };
        Ok(StartRequest {
            parameters: self.parameters.unwrap_or_default(),
            pipeline_version: self.pipeline_version,
            client_request_token: self.client_request_token,
            selective_execution,
            cache_mode: self.cache_mode,
            max_parallel_steps,
            display_name: self.display_name,
            description: self.description,
            request_hash,
        })
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Invalid { message, issues } => ApiError::validation(message, issues),
            StartError::Store(e) => e.into(),
        }
    }
}

#[derive(Serialize)]
pub struct Execution {
    execution_id: Uuid,
    execution_arn: String,
    pipeline_name: String,
    pipeline_arn: String,
    pipeline_version: i32,
    status: String,
    failure_reason: Option<String>,
    parameters: Value,
    selective_execution: Option<Value>,
    cache_mode: String,
    max_parallel_steps: Option<i32>,
    display_name: Option<String>,
    description: Option<String>,
    client_request_token: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
}

impl AppState {
    pub fn execution_view(&self, row: ExecutionRow) -> Execution {
        Execution {
            execution_arn: self.arns.execution(&row.pipeline_name, row.id),
            pipeline_arn: self.arns.pipeline(&row.pipeline_name),
            execution_id: row.id,
            pipeline_name: row.pipeline_name,
            pipeline_version: row.pipeline_version,
            status: row.status,
            failure_reason: row.failure_reason,
            parameters: row.parameters,
            selective_execution: row.selective_execution,
            cache_mode: row.cache_mode,
            max_parallel_steps: row.max_parallel_steps,
            display_name: row.display_name,
            description: row.description,
            client_request_token: row.client_request_token,
            created_at: row.created_at,
            started_at: row.started_at,
            ended_at: row.ended_at,
        }
    }

    /// Finds the execution an ARN or UUID names. A malformed reference is a
    /// 400; an ARN naming another pipeline is not found.
    pub async fn find_execution(&self, reference: &str) -> ApiResult<ExecutionRow> {
        let parsed = self
            .arns
            .parse_execution(reference)
            .map_err(|m| ApiError::invalid("/execution", m))?;
        let mut conn = self.db.acquire().await?;
        let row = store::executions::get(&mut conn, parsed.id).await?;
        match parsed.pipeline {
            Some(p) if p != row.pipeline_name => {
                Err(ApiError::not_found(format!("execution {reference} does not exist")))
            }
            _ => Ok(row),
        }
    }
}

/// Start an execution. With `client_request_token`, a repeat of the same
/// request returns the first execution (200); a different body is a 409.
async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<StartBody>,
) -> ApiResult<(StatusCode, Json<Execution>)> {
    let request = body.into_request()?;
    let (row, created) = start::start_execution(
        &state.db,
        &state.arns,
        &Settings::from_config(&state.config),
        &state.definitions,
        &name,
        &request,
    )
    .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(state.execution_view(row))))
}

/// Plan a start without starting anything: each step's verdict (Run,
/// Reuse, CacheHit, Skip) with its reason, and the errors a start would give.
async fn plan(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<StartBody>,
) -> ApiResult<Json<ExecutionPlan>> {
    let request = match body.into_request() {
        Ok(r) => r,
        Err(e) => return Ok(Json(ExecutionPlan::failed(e.message, e.details))),
    };
    Ok(Json(
        plan::plan_execution(
            &state.db,
            &state.arns,
            &Settings::from_config(&state.config),
            &state.definitions,
            &name,
            &request,
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    step: Option<String>,
}

#[derive(Serialize)]
struct Purged {
    deleted: u64,
}

/// Purge a pipeline's cache entries (of one step with `?step=`).
async fn purge_cache(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PurgeQuery>,
) -> ApiResult<Json<Purged>> {
    let pipeline = store::pipelines::get(&state.db, &name, None).await?;
    let deleted = store::cache::purge(&state.db, pipeline.id, q.step.as_deref()).await?;
    Ok(Json(Purged { deleted }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

#[derive(Serialize)]
struct ExecutionList {
    executions: Vec<Execution>,
    next_token: Option<String>,
}

const STATUSES: [&str; 5] = ["Executing", "Stopping", "Succeeded", "Failed", "Stopped"];

/// List a pipeline's executions, newest first, optionally by status.
async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ExecutionList>> {
    let limit = pagination::limit(q.limit)?;
    if let Some(status) = &q.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::invalid(
                "?status",
                format!("unknown status {status:?}; one of {STATUSES:?}"),
            ));
        }
    }
    let after: Option<(DateTime<Utc>, Uuid)> = pagination::decode(q.next_token.as_deref())?;
    // A forged time PostgreSQL cannot hold (before 4713 BC) would be its
    // error; no execution this server lists was created outside these years.
    if after.is_some_and(|(at, _)| !(1..=9999).contains(&at.year())) {
        return Err(pagination::bad_token());
    }
    let pipeline = store::pipelines::get(&state.db, &name, None).await?;
    let rows = store::executions::list(&state.db, pipeline.id, q.status.as_deref(), after, limit).await?;
    let next_token = pagination::next_token(&rows, limit, |r| (r.created_at, r.id));
    let executions = rows.into_iter().map(|r| state.execution_view(r)).collect();
    Ok(Json(ExecutionList { executions, next_token }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeQuery {
    wait_seconds: Option<u64>,
}

/// Describe an execution. With `wait_seconds=N`, answers when it ends or
/// after N seconds, whichever is first; a server that shuts down answers a
/// waiting request at once with the current state.
async fn describe(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    Query(q): Query<DescribeQuery>,
) -> ApiResult<Json<Execution>> {
    let wait = q.wait_seconds.unwrap_or(0);
    if wait > state.config.api.max_wait_seconds {
        return Err(ApiError::invalid(
            "?wait_seconds",
            format!(
                "wait_seconds must be at most {} (api.max_wait_seconds)",
                state.config.api.max_wait_seconds
            ),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut notices = state.notifier.subscribe();
    let mut row = state.find_execution(&reference).await?;
    // A shutting-down server answers with the state it has.
    while !row.is_terminal() && tokio::time::Instant::now() < deadline && !state.stopping.is_cancelled() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            _ = state.stopping.cancelled() => break,
            _ = notify::execution_changed(&mut notices, row.id, remaining.min(Duration::from_secs(1))) => {}
        }
        let mut conn = state.db.acquire().await?;
        row = store::executions::get(&mut conn, row.id).await?;
    }
    Ok(Json(state.execution_view(row)))
}

/// Stop a running execution; 409 when it has already ended.
async fn stop(State(state): State<AppState>, Path(reference): Path<String>) -> ApiResult<Json<Execution>> {
    let row = state.find_execution(&reference).await?;
    let row = engine::stop_execution(&state.db, row.id).await?;
    Ok(Json(state.execution_view(row)))
}

/// Retry a Failed or Stopped execution in place: failed, stopped and not-run
/// steps run again, succeeded ones are kept.
async fn retry(State(state): State<AppState>, Path(reference): Path<String>) -> ApiResult<Json<Execution>> {
    let row = state.find_execution(&reference).await?;
    let row = engine::retry_execution(&state.db, row.id).await?;
    Ok(Json(state.execution_view(row)))
}

#[derive(Serialize)]
struct Parameters {
    execution_arn: String,
    parameters: Value,
}

/// The effective parameter values of an execution.
async fn parameters(State(state): State<AppState>, Path(reference): Path<String>) -> ApiResult<Json<Parameters>> {
    let row = state.find_execution(&reference).await?;
    Ok(Json(Parameters {
        execution_arn: state.arns.execution(&row.pipeline_name, row.id),
        parameters: row.parameters,
    }))
}

#[derive(Serialize)]
struct DefinitionSnapshot {
    execution_arn: String,
    pipeline_version: i32,
    definition: Value,
}

/// The definition snapshot the execution ran.
async fn definition(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<Json<DefinitionSnapshot>> {
    let row = state.find_execution(&reference).await?;
    let mut conn = state.db.acquire().await?;
    let definition = store::executions::definition(&mut conn, row.id).await?;
    Ok(Json(DefinitionSnapshot {
        execution_arn: state.arns.execution(&row.pipeline_name, row.id),
        pipeline_version: row.pipeline_version,
        definition,
    }))
}

#[derive(Serialize)]
struct EventData<'a> {
    id: i64,
    execution_id: Uuid,
    step_name: &'a Option<String>,
    status: &'a str,
    detail: &'a Option<Value>,
    created_at: DateTime<Utc>,
}

fn sse_event(execution_id: Uuid, row: &EventRow) -> Event {
    let data = EventData {
        id: row.id,
        execution_id,
        step_name: &row.step_name,
        status: &row.status,
        detail: &row.detail,
        created_at: row.created_at,
    };
    Event::default()
        .id(row.id.to_string())
        .event(if row.step_name.is_some() { "step" } else { "execution" })
        .json_data(data)
        .expect("event data serializes")
}

/// The final event of a stream cut short by a shutdown. It has no id, so a
/// client that reconnects with `Last-Event-ID` resumes where it was.
fn shutdown_event() -> Event {
    Event::default()
        .event("shutdown")
        .json_data(serde_json::json!({
            "reason": "the server is shutting down; reconnect with Last-Event-ID to resume"
        }))
        .expect("event data serializes")
}

/// Server-sent events of every status change of the execution and its
/// steps, from the start (or after `Last-Event-ID`); the stream ends when
/// the execution has ended, or with a `shutdown` event when the server
/// shuts down.
async fn events(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let row = state.find_execution(&reference).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let notices = state.notifier.subscribe();
    let execution_id = row.id;
    let stream = stream::unfold(Some((state, notices, after)), move |following| async move {
        let (state, mut notices, after) = following?;
        let stopping = state.stopping.clone();
        let batch = tokio::select! {
            biased;
            _ = stopping.cancelled() => None,
            batch = next_events(&state, execution_id, after, &mut notices) => Some(batch),
        };
        match batch {
            None => Some((vec![Ok(shutdown_event())], None)),
            Some(Some((events, last_id))) => Some((events, Some((state, notices, last_id)))),
            Some(None) => None,
        }
    })
    .flat_map(stream::iter);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The events after `after` with the last one's id, waiting for some; None
/// once the execution has ended and every event was sent (or on an error).
async fn next_events(
    state: &AppState,
    execution_id: Uuid,
    after: i64,
    notices: &mut tokio::sync::broadcast::Receiver<notify::Notice>,
) -> Option<(Vec<Result<Event, Infallible>>, i64)> {
    loop {
        // Whether it had ended is read before the events, so the events
        // that ended it are always read before the stream closes.
        let terminal = {
            let mut conn = state.db.acquire().await.ok()?;
            store::executions::get(&mut conn, execution_id)
                .await
                .ok()?
                .is_terminal()
        };
        let rows = match store::executions::events_after(&state.db, execution_id, after).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading events failed; ending the stream");
                return None;
            }
        };
        if let Some(last) = rows.last() {
            let events = rows.iter().map(|r| Ok(sse_event(execution_id, r))).collect();
            return Some((events, last.id));
        }
        if terminal {
            return None;
        }
        notify::execution_changed(notices, execution_id, Duration::from_secs(1)).await;
    }
}
