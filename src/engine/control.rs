//! Transitions asked for from outside the workers: stop and retry of an
//! execution (SPEC 3.4), and the two halves of a Callback step (the wait
//! begins; a client reports its result by token).

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{complete_attempt, finish_if_done, retrying, triggers, Applied, StepOutcome};
use crate::store::{
    executions::{self, ExecutionRow},
    steps, transitions, triggers as store_triggers, StoreError, StoreResult,
};

/// Stops a running execution (SPEC 3.4). Unstarted steps are skipped,
/// waiting callbacks cancelled, running processes signalled by their workers.
pub async fn stop_execution(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
    retrying(|| stop_once(pool, execution_id)).await
}

async fn stop_once(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
    let mut tx = pool.begin().await?;
    let execution = executions::lock(&mut tx, execution_id).await?;
    if execution.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "execution {execution_id} has already ended ({}); only a running execution can be stopped",
            execution.status
        )));
    }
    let has_triggers = store_triggers::has_triggers(&mut tx, execution_id).await?;
    let mut queued = 0;
    if execution.status == "Executing" {
        transitions::set_execution_status(&mut tx, execution_id, "Stopping", false, None).await?;
        // Handlers not started yet (and the steps below them) stay, to be
        // judged once what they depend on has ended.
        triggers::skip_unstarted(&mut tx, execution_id, has_triggers, "ExecutionStopped").await?;
        transitions::stop_running_steps(&mut tx, execution_id).await?;
        // A ForEach whose iterations were all waiting ends now.
        queued += super::for_each::settle(&mut tx, execution_id).await?;
        if has_triggers {
            queued += triggers::settle(
                &mut tx,
                execution_id,
                execution.max_parallel_steps,
                triggers::Ended::Other,
            )
            .await?;
        }
    } else if has_triggers {
        // A second stop, while handlers run: it stops them too.
        steps::skip_unstarted(&mut tx, execution_id, "ExecutionStopped").await?;
        transitions::stop_running_steps(&mut tx, execution_id).await?;
        super::for_each::settle(&mut tx, execution_id).await?;
    }
    let execution = executions::get(&mut tx, execution_id).await?;
    finish_if_done(&mut tx, &execution).await?;
    steps::notify_stop(&mut tx, execution_id).await?;
    if queued > 0 {
        steps::notify(&mut tx, execution_id, true).await?;
    }
    let execution = executions::get(&mut tx, execution_id).await?;
    tx.commit().await?;
    Ok(execution)
}

/// Retries a Failed or Stopped execution in place (SPEC 3.4): failed,
/// stopped and not-run steps are reset and scheduled, each with a fresh
/// retry budget; succeeded ones kept.
pub async fn retry_execution(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
    retrying(|| retry_once(pool, execution_id)).await
}

async fn retry_once(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
    let mut tx = pool.begin().await?;
    let execution = executions::lock(&mut tx, execution_id).await?;
    if !matches!(execution.status.as_str(), "Failed" | "Stopped") {
        return Err(StoreError::Conflict(format!(
            "execution {execution_id} is {}; only a Failed or Stopped execution can be retried",
            execution.status
        )));
    }
    if execution.failed_by_fail_step {
        return Err(StoreError::Conflict(format!(
            "execution {execution_id} was failed by a Fail step ({}); retrying would fail the same way",
            execution.failure_reason.as_deref().unwrap_or("")
        )));
    }
    // Steps below a branch that was not taken stay skipped.
    let blocked = transitions::reset_for_retry(&mut tx, execution_id).await?;
    let has_triggers = store_triggers::has_triggers(&mut tx, execution_id).await?;
    if has_triggers {
        // Reset handlers (TriggerNotMet ones included) are judged again
        // once their dependencies have ended in the retried run.
        store_triggers::regate_handlers(&mut tx, execution_id).await?;
    }
    steps::skip_with_descendants(&mut tx, execution_id, &blocked, "UpstreamNotRun").await?;
    transitions::set_execution_status(&mut tx, execution_id, "Executing", false, None).await?;
    super::for_each::reopen(&mut tx, execution_id).await?;
    let mut queued = steps::promote_ready(&mut tx, execution_id, execution.max_parallel_steps).await?;
    queued += super::for_each::settle(&mut tx, execution_id).await?;
    if has_triggers {
        queued += triggers::settle(
            &mut tx,
            execution_id,
            execution.max_parallel_steps,
            triggers::Ended::Other,
        )
        .await?;
    }
    let execution = executions::get(&mut tx, execution_id).await?;
    finish_if_done(&mut tx, &execution).await?;
    steps::notify(&mut tx, execution_id, queued > 0).await?;
    let execution = executions::get(&mut tx, execution_id).await?;
    tx.commit().await?;
    Ok(execution)
}

/// A Callback step starts waiting: its token is recorded and its lease
/// dropped (a wait holds no worker). Returns false when the attempt is stale.
pub async fn begin_callback(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    token: Uuid,
    timeout_seconds: Option<u64>,
    sqs_queue_url: Option<&str>,
) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let timeout = timeout_seconds.map(|s| s as f64);
    let Some((execution_id, step_name)) =
        transitions::begin_callback(&mut tx, id, attempt, token, timeout, sqs_queue_url).await?
    else {
        return Ok(false);
    };
    let detail = json!({"waiting_for_callback": true});
    executions::record_event(&mut tx, execution_id, Some(&step_name), "Executing", Some(detail)).await?;
    steps::notify(&mut tx, execution_id, false).await?;
    tx.commit().await?;
    Ok(true)
}

/// A client reported the result of a Callback step by its token. Unknown
/// tokens are not found; used or cancelled ones conflict, and so does a
/// report that lost a race with a stop or a time-out. Reports are
/// idempotent: the very report already recorded (sent again because its
/// answer was lost, or run again after its success committed) succeeds.
pub async fn complete_callback(pool: &PgPool, token: Uuid, report: CallbackReport) -> StoreResult<()> {
    let Some(step) = callback_step(pool, token).await? else {
        return Err(StoreError::NotFound(format!(
            "no callback is waiting for token {token}"
        )));
    };
    if step.status == "Executing" {
        match complete_attempt(pool, step.id, step.attempt, report.outcome(), None).await? {
            Applied::Applied | Applied::AppliedQueued => return Ok(()),
            Applied::Stale => {}
        }
    }
    let now = callback_step(pool, token).await?.unwrap_or(step);
    if !report.recorded_in(&now) {
        return Err(callback_used(&now));
    }
    if now.status != "Executing" {
        // Sent again: the first report's finish check may have been lost
        // with its answer. The stale report runs it again.
        complete_attempt(pool, now.id, now.attempt, report.outcome(), None).await?;
    }
    Ok(())
}

async fn callback_step(pool: &PgPool, token: Uuid) -> StoreResult<Option<steps::StepRunRow>> {
    let mut conn = pool.acquire().await?;
    steps::find_by_callback_token(&mut conn, token).await
}

/// The refusal of a report for a token whose step no longer waits.
pub fn callback_used(step: &steps::StepRunRow) -> StoreError {
    StoreError::Conflict(format!(
        "the token of step {:?} was already used or cancelled (the step is {})",
        step.step_name, step.status
    ))
}

pub enum CallbackReport {
    Success(Value),
    Failure(String),
}

impl CallbackReport {
    fn outcome(&self) -> StepOutcome {
        match self {
            CallbackReport::Success(outputs) => StepOutcome::Succeeded {
                properties: json!({ "OutputParameters": outputs }),
                metadata: json!({}),
                exit_code: None,
                key: None,
            },
            CallbackReport::Failure(reason) => StepOutcome::failed("Callback.FAILED", reason.clone()),
        }
    }

    /// Whether `step` (found by this report's token) ended with this very report.
    fn recorded_in(&self, step: &steps::StepRunRow) -> bool {
        match self {
            CallbackReport::Success(outputs) => {
                step.status == "Succeeded"
                    && step.properties.as_ref().and_then(|p| p.get("OutputParameters")) == Some(outputs)
            }
            CallbackReport::Failure(reason) => {
                step.status == "Failed"
                    && step.error_type.as_deref() == Some("Callback.FAILED")
                    && step.failure_reason.as_deref() == Some(reason.as_str())
            }
        }
    }
}
