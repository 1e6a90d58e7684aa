//! `/v1/callbacks/{token}`: a client reports the result of a Callback step.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, ApiResult},
    extract::{JsonBody, Path},
    routes::Routes,
    AppState,
};
use crate::{
    engine::{self, CallbackReport},
    executor::check_callback_outputs,
    store,
};

pub fn router() -> Routes {
    Routes::new()
        .post("/v1/callbacks/{token}/success", success)
        .post("/v1/callbacks/{token}/failure", failure)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuccessBody {
    #[serde(default)]
    output_parameters: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailureBody {
    failure_reason: String,
}

#[derive(Serialize)]
struct Reported {
    step_name: String,
    execution_id: Uuid,
    status: &'static str,
}

fn parse_token(token: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(token).map_err(|_| ApiError::not_found(format!("no callback is waiting for token {token:?}")))
}

/// Report success of the Callback step waiting on `token`, with its output
/// values (checked against the declared `OutputParameters`).
async fn success(
    State(state): State<AppState>,
    Path(token): Path<String>,
    JsonBody(body): JsonBody<SuccessBody>,
) -> ApiResult<Json<Reported>> {
    let token = parse_token(&token)?;
    let step = callback_step(&state, token).await?;
    let outputs = match check_callback_outputs(&step.arguments, &body.output_parameters) {
        Ok(outputs) => outputs,
        // Not the report recorded (that one was valid): the token is used.
        Err(_) if step.status != "Executing" => return Err(engine::callback_used(&step).into()),
        Err(problems) => {
            let details = problems
                .iter()
                .map(|p| crate::domain::Issue::new("/output_parameters", p.clone()))
                .collect();
            return Err(ApiError::validation(problems.join("; "), details));
        }
    };
    engine::complete_callback(&state.db, token, CallbackReport::Success(outputs)).await?;
    Ok(Json(Reported {
        step_name: step.step_name,
        execution_id: step.execution_id,
        status: "Succeeded",
    }))
}

/// Report failure of the Callback step waiting on `token`.
async fn failure(
    State(state): State<AppState>,
    Path(token): Path<String>,
    JsonBody(body): JsonBody<FailureBody>,
) -> ApiResult<Json<Reported>> {
    let token = parse_token(&token)?;
    let step = callback_step(&state, token).await?;
    engine::complete_callback(&state.db, token, CallbackReport::Failure(body.failure_reason)).await?;
    Ok(Json(Reported {
        step_name: step.step_name,
        execution_id: step.execution_id,
        status: "Failed",
    }))
}

/// The step `token` belongs to, whatever its state: the engine decides
/// whether a report for it still applies (or was recorded already).
async fn callback_step(state: &AppState, token: Uuid) -> ApiResult<store::steps::StepRunRow> {
    let mut conn = state.db.acquire().await?;
    store::steps::find_by_callback_token(&mut conn, token)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no callback is waiting for token {token}")))
}
