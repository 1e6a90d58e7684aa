//! The step runs of an execution: list, one step with its attempts and
//! cache details, and the captured log of an attempt.

use axum::{
    extract::{Extension, State},
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, ApiResult},
    extract::{Path, Query},
    routes::Routes,
    AppState,
};
use crate::{
    domain::auth::Role,
    engine::tokens::Principal,
    executor::command::{read_log, AttemptDirs},
    store::{
        self,
        executions::ExecutionRow,
        steps::{AttemptRow, StepRunRow},
    },
};

pub fn router() -> Routes {
    Routes::new()
        .get("/v1/executions/{execution}/steps", list)
        .get("/v1/executions/{execution}/steps/{step}", describe)
        .get("/v1/executions/{execution}/steps/{step}/logs", logs)
}

#[derive(Serialize)]
pub struct StepRun {
    step_name: String,
    step_type: String,
    status: String,
    skip_reason: Option<String>,
    attempt_count: i32,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    failure_reason: Option<String>,
    error_type: Option<String>,
    properties: Option<Value>,
    cache_hit: Option<Value>,
    reused_from: Option<Value>,
    cache: Option<Value>,
    metadata: Value,
    /// For a step of a ForEach iteration: which ForEach, iteration and item.
    #[serde(skip_serializing_if = "Option::is_none")]
    iteration: Option<IterationOf>,
}

#[derive(Serialize)]
struct IterationOf {
    for_each: String,
    index: i32,
    item: Value,
    body_step: String,
}

#[derive(Serialize)]
struct StepDetail {
    #[serde(flatten)]
    run: StepRun,
    dependencies: Vec<String>,
    attempts: Vec<Attempt>,
}

#[derive(Serialize)]
struct Attempt {
    attempt: i32,
    status: String,
    error_type: Option<String>,
    failure_reason: Option<String>,
    exit_code: Option<i32>,
    worker_id: Option<Uuid>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct StepList {
    steps: Vec<StepRun>,
    next_token: Option<String>,
}

/// Whether `principal` may see a waiting Callback step's token: whoever
/// holds it can report the step's result, which is an operator's power.
fn sees_callback_tokens(principal: &Principal) -> bool {
    principal.role >= Role::Operator
}

fn view(row: StepRunRow, with_components: bool, callback_token: bool) -> StepRun {
    let mut metadata = row.metadata;
    if !callback_token {
        if let Some(callback) = metadata.get_mut("callback").and_then(Value::as_object_mut) {
            callback.remove("token");
        }
    }
    let cache = row.cache_status.as_ref().map(|status| {
        let mut cache = json!({
            "status": status,
            "key": row.cache_key,
            "miss_reason": row.cache_miss_reason,
            "warnings": row.cache_warnings.clone().unwrap_or(json!([])),
        });
        if with_components {
            cache["components"] = row.cache_components.clone().unwrap_or(Value::Null);
        }
        cache
    });
    let iteration = match (row.parent, row.iteration, row.local_name) {
        (Some(for_each), Some(index), Some(body_step)) => Some(IterationOf {
            for_each,
            index,
            item: row.item.unwrap_or(Value::Null),
            body_step,
        }),
        _ => None,
    };
    StepRun {
        iteration,
        step_name: row.step_name,
        step_type: row.step_type,
        status: row.status,
        skip_reason: row.skip_reason,
        attempt_count: row.attempt,
        started_at: row.started_at,
        ended_at: row.ended_at,
        failure_reason: row.failure_reason,
        error_type: row.error_type,
        properties: row.properties,
        cache_hit: row.cache_hit,
        reused_from: row.reused_from,
        cache,
        metadata,
    }
}

/// A step of an iteration of a ForEach this execution reused whole is a
/// row of the execution that ran it: it says so, as a reused step does.
fn reused_with_its_for_each(mut row: StepRunRow, execution: &ExecutionRow, arns: &crate::ids::Arns) -> StepRunRow {
    if row.parent.is_some() && row.execution_id != execution.id && row.reused_from.is_none() {
        row.reused_from = Some(json!({
            "source_execution_arn": arns.execution(&execution.pipeline_name, row.execution_id),
            "source_step_run_id": row.id,
            "reason": "reused with its ForEach from the source execution",
        }));
    }
    row
}

fn attempt_view(row: AttemptRow) -> Attempt {
    Attempt {
        attempt: row.attempt,
        status: row.status,
        error_type: row.error_type,
        failure_reason: row.failure_reason,
        exit_code: row.exit_code,
        worker_id: row.worker_id,
        started_at: row.started_at,
        ended_at: row.ended_at,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// List the steps of this ForEach's iterations instead, a page at a time.
    for_each: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

/// The execution's steps in pipeline order, a page at a time; with
/// `?for_each=F`, the steps of F's iterations, in item order.
async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(reference): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<StepList>> {
    let execution = state.find_execution(&reference).await?;
    let tokens = sees_callback_tokens(&principal);
    let limit = super::pagination::limit(q.limit)?;
    let Some(for_each) = q.for_each else {
        let after: Option<(i32, String)> = super::pagination::decode(q.next_token.as_deref())?;
        let rows = store::steps::list_page(&state.db, execution.id, after, limit).await?;
        let next_token = super::pagination::next_token(&rows, limit, |r| (r.position, r.step_name.clone()));
        return Ok(Json(StepList {
            steps: rows.into_iter().map(|r| view(r, false, tokens)).collect(),
            next_token,
        }));
    };
    let after: Option<(i32, i32)> = super::pagination::decode(q.next_token.as_deref())?;
    let parent = store::steps::get_by_name(&state.db, execution.id, &for_each).await?;
    if parent.step_type != "ForEach" {
        return Err(ApiError::invalid(
            "?for_each",
            format!("step {for_each:?} is a {} step, not a ForEach", parent.step_type),
        ));
    }
    // A reused ForEach's iterations are those of the run it reused.
    let rows = store::steps::iterations(&state.db, parent.id, after, limit).await?;
    let next_token = super::pagination::next_token(&rows, limit, |(r, body)| (r.iteration.unwrap_or(0), *body));
    Ok(Json(StepList {
        steps: rows
            .into_iter()
            .map(|(r, _)| view(reused_with_its_for_each(r, &execution, &state.arns), false, tokens))
            .collect(),
        next_token,
    }))
}

/// One step with its attempt history and cache details.
async fn describe(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((reference, step)): Path<(String, String)>,
) -> ApiResult<Json<StepDetail>> {
    let execution = state.find_execution(&reference).await?;
    let row = store::steps::get_by_name(&state.db, execution.id, &step).await?;
    let row = reused_with_its_for_each(row, &execution, &state.arns);
    // A step reused at the start made no attempt here (its id is the run it
    // reused); one reused by early cut-off shows the attempt that compared.
    let attempts = if row.reused_from.is_some() && row.attempt == 0 {
        Vec::new()
    } else {
        store::steps::attempts(&state.db, row.id).await?
    };
    Ok(Json(StepDetail {
        dependencies: row.dependencies.clone(),
        run: view(row, true, sees_callback_tokens(&principal)),
        attempts: attempts.into_iter().map(attempt_view).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    attempt: Option<i32>,
    /// Stream the log as it is written, until the attempt ends (or
    /// `api.max_wait_seconds` pass: the client asks again from `offset`).
    #[serde(default)]
    follow: bool,
    /// With `follow`: the bytes of the log already received.
    offset: Option<u64>,
}

/// The captured stdout and stderr of an attempt (the latest by default).
async fn logs(
    State(state): State<AppState>,
    Path((reference, step)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let execution = state.find_execution(&reference).await?;
    let row = store::steps::get_by_name(&state.db, execution.id, &step).await?;
    if let Some(reused_from) = &row.reused_from {
        let run = reused_from
            .get("source_step_run_id")
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok())
            .unwrap_or(row.id);
        return Err(reused_log(&state, &step, run).await?);
    }
    if q.offset.is_some() && !q.follow {
        return Err(ApiError::invalid(
            "?offset",
            "offset is only meaningful with follow=true",
        ));
    }
    if q.follow {
        if let Some(attempt) = q.attempt.filter(|a| *a < 1 || *a > row.attempt.max(1)) {
            return Err(ApiError::not_found(format!(
                "step {step:?} has no attempt {attempt} (it has {} attempt(s))",
                row.attempt
            )));
        }
        let follow = super::log_follow::Follow {
            execution_id: execution.id,
            step_run_id: row.id,
            step,
            attempt: q.attempt,
            offset: q.offset.unwrap_or(0),
        };
        return Ok(super::log_follow::stream(state, follow).into_response());
    }
    let attempt = q.attempt.unwrap_or(row.attempt);
    if attempt < 1 || attempt > row.attempt {
        return Err(ApiError::not_found(format!(
            "step {step:?} has no attempt {attempt} (it has {} attempt(s))",
            row.attempt
        )));
    }
    let stored = store::steps::attempt_log(&state.db, row.id, attempt).await?;
    let bytes = match stored {
        Some(Some(bytes)) => bytes,
        // Still running, or ended without a log: read the local file if any.
        _ => {
            let dirs = AttemptDirs::new(&state.config.data_dir, execution.id, &step, attempt);
            read_log(&dirs.log).await.unwrap_or_default()
        }
    };
    // The bytes as the process wrote them (NULs and invalid UTF-8 included).
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

/// The answer for the log of a reused step: it ran in no attempt here, so
/// the 404 says where it did run and where its log is (the execution that
/// ran it, which may be older than the immediate source).
async fn reused_log(state: &AppState, step: &str, run: Uuid) -> ApiResult<ApiError> {
    let Some(origin) = store::steps::run_origin(&state.db, run).await? else {
        return Ok(ApiError::not_found(format!(
            "step {step:?} was reused from another execution and made no attempt in this one; \
             the run it reused no longer exists"
        )));
    };
    let arn = state.arns.execution(&origin.pipeline_name, origin.execution_id);
    Ok(ApiError::not_found(format!(
        "step {step:?} was reused, so it has no log in this execution; it ran as step {:?} of execution {arn}, \
         whose log is at /v1/executions/{}/steps/{}/logs",
        origin.step_name, origin.execution_id, origin.step_name
    )))
}
