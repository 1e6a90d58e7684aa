//! The scheduler. Every state transition of an execution is one transaction
//! that first locks the execution row, applies the change, and does all the
//! scheduling it causes (skips, dependency counts, queueing, finishing) with
//! set-based statements, then notifies listeners at commit.

pub mod definitions;
pub mod plan;
pub mod selective;
pub mod start;

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    domain::retry::{next_retry, RetryPolicy},
    store::{
        executions::{self, ExecutionRow},
        steps::{self, AttemptEnd},
        StoreError, StoreResult,
    },
};

/// How an attempt ended, as the executor saw it.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    Succeeded {
        properties: Value,
        metadata: Value,
        exit_code: Option<i32>,
    },
    Failed {
        error_type: String,
        message: String,
        metadata: Value,
        exit_code: Option<i32>,
        /// A Fail step: the execution fails with its message and cannot be retried.
        by_fail_step: bool,
    },
    /// The process was ended because its execution was stopped.
    Stopped { message: String },
}

impl StepOutcome {
    pub fn failed(error_type: &str, message: impl Into<String>) -> StepOutcome {
        StepOutcome::Failed {
            error_type: error_type.to_string(),
            message: message.into(),
            metadata: json!({}),
            exit_code: None,
            by_fail_step: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Applied, and it made further steps of the execution runnable.
    AppliedQueued,
    /// The attempt is no longer current (its lease was rescued, or the step
    /// was stopped or reset): the result is dropped.
    Stale,
}

/// Records the end of attempt `attempt` of step run `id` and schedules what
/// follows. Fenced by attempt: a late report from a lost attempt is dropped.
pub async fn complete_attempt(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    outcome: StepOutcome,
    log: Option<&[u8]>,
) -> StoreResult<Applied> {
    Ok(complete(pool, id, attempt, outcome, log, None, true).await?.0)
}

/// A worker that reports a step and has room for another.
#[derive(Debug, Clone, Copy)]
pub struct NextClaim {
    pub worker_id: Uuid,
    pub lease_seconds: f64,
}

/// `complete_attempt`, and when it makes steps of the execution runnable,
/// claims one of them for `next` in the same transaction: a chain moves on
/// with one commit per step. `leaf` is the claim's word on whether the
/// step's success schedules nothing; when it does schedule something, the
/// lock-free leaf statement is not tried (it could not apply).
pub async fn complete_and_claim(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    outcome: StepOutcome,
    log: Option<&[u8]>,
    next: NextClaim,
    leaf: bool,
) -> StoreResult<(Applied, Option<steps::ClaimedStep>)> {
    complete(pool, id, attempt, outcome, log, Some(next), leaf).await
}

async fn complete(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    outcome: StepOutcome,
    log: Option<&[u8]>,
    next: Option<NextClaim>,
    may_be_leaf: bool,
) -> StoreResult<(Applied, Option<steps::ClaimedStep>)> {
    if let (
        true,
        StepOutcome::Succeeded {
            properties,
            metadata,
            exit_code,
        },
    ) = (may_be_leaf, &outcome)
    {
        let success = steps::Success {
            id,
            attempt,
            properties,
            metadata,
            exit_code: *exit_code,
            log,
        };
        if let Some(execution_id) = steps::succeed_leaf(pool, &success).await? {
            finish_if_done_unlocked(pool, execution_id).await?;
            return Ok((Applied::Applied, None));
        }
    }
    let mut tx = pool.begin().await?;
    let Some(locked) = steps::lock_with_execution(&mut tx, id).await? else {
        return Ok((Applied::Stale, None));
    };
    let step = locked.step;
    let execution_id = step.execution_id;
    let execution = executions::ExecutionState {
        id: execution_id,
        status: locked.execution_status,
        max_parallel_steps: locked.execution_max_parallel_steps,
    };
    if step.attempt != attempt || !matches!(step.status.as_str(), "Executing" | "Stopping") {
        tracing::info!(step_run.id = %id, attempt, current_attempt = step.attempt, status = %step.status, "dropping a stale step result");
        return Ok((Applied::Stale, None));
    }
    // A process ended by its worker while no stop was asked for (the worker
    // believed its lease lost) is a service fault, retried like one.
    let outcome = match outcome {
        StepOutcome::Stopped { message } if step.status != "Stopping" => {
            StepOutcome::failed("Step.SERVICE_FAULT", format!("{message} (no stop was requested)"))
        }
        other => other,
    };
    let mut work_queued = false;
    let mut queued_count = 0;
    // Recording a success notifies the execution's listeners itself.
    let mut listeners_notified = false;
    match outcome {
        StepOutcome::Succeeded {
            properties,
            metadata,
            exit_code,
        } => {
            let success = steps::Success {
                id,
                attempt,
                properties: &properties,
                metadata: &metadata,
                exit_code,
                log,
            };
            steps::succeed(&mut tx, &success).await?;
            listeners_notified = true;
            if execution.status == "Executing" {
                if step.step_type == "Condition" {
                    let outcome = properties.get("Outcome").and_then(Value::as_bool).unwrap_or(false);
                    skip_branch_not_taken(&mut tx, execution_id, &step.step_name, outcome).await?;
                }
                let queued = match execution.max_parallel_steps {
                    // Unbounded: dependents whose last dependency this was are queued in the same statement.
                    None => steps::decrement_and_queue(&mut tx, execution_id, &step.dependents).await?,
                    Some(max) => {
                        steps::decrement_dependents(&mut tx, execution_id, &step.dependents).await?;
                        steps::promote_ready(&mut tx, execution_id, Some(max)).await?
                    }
                };
                work_queued = queued > 0;
                queued_count = queued;
            }
        }
        StepOutcome::Failed {
            error_type,
            message,
            metadata,
            exit_code,
            by_fail_step,
        } => {
            let retry_in = if execution.status == "Executing" && step.status == "Executing" && !by_fail_step {
                let policies: Vec<RetryPolicy> =
                    serde_json::from_value(step.retry_policies.clone()).unwrap_or_default();
                let first_started = step.first_started_at.unwrap_or_else(Utc::now);
                next_retry(&policies, &error_type, attempt as u32, first_started, Utc::now())
            } else {
                None
            };
            let end = AttemptEnd {
                status: "Failed",
                error_type: Some(&error_type),
                failure_reason: Some(&message),
                exit_code,
                log,
            };
            steps::end_attempt(&mut tx, id, attempt, &end).await?;
            if let Some(delay) = retry_in {
                sqlx::query(
                    "update step_runs set status = 'Starting', available_at = now() + make_interval(secs => $2), \
                     lease_owner = null, lease_expires_at = null, callback_deadline = null, failure_reason = $3, \
                     error_type = $4, metadata = metadata || $5 where id = $1",
                )
                .bind(id)
                .bind(delay.as_secs_f64())
                .bind(&message)
                .bind(&error_type)
                .bind(&metadata)
                .execute(&mut *tx)
                .await?;
                let detail = json!({"retry_in_seconds": delay.as_secs_f64(), "error_type": error_type, "failure_reason": message, "attempt": attempt});
                executions::record_event(&mut tx, execution_id, Some(&step.step_name), "Starting", Some(detail))
                    .await?;
                work_queued = true;
            } else {
                let status = if step.status == "Stopping" { "Stopped" } else { "Failed" };
                end_step(&mut tx, id, status, &error_type, &message, &metadata).await?;
                executions::record_event(
                    &mut tx,
                    execution_id,
                    Some(&step.step_name),
                    status,
                    Some(json!({"error_type": error_type, "failure_reason": message})),
                )
                .await?;
                if execution.status == "Executing" {
                    let reason = if by_fail_step {
                        message.clone()
                    } else {
                        format!("step {:?} failed: {error_type}: {message}", step.step_name)
                    };
                    steps::set_failure_reason(&mut tx, execution_id, &reason, by_fail_step).await?;
                    // No new step starts after a final failure (SPEC 3.2).
                    steps::skip_unstarted(&mut tx, execution_id, "UpstreamNotRun").await?;
                }
            }
        }
        StepOutcome::Stopped { message } => {
            let end = AttemptEnd {
                status: "Stopped",
                error_type: None,
                failure_reason: Some(&message),
                exit_code: None,
                log,
            };
            steps::end_attempt(&mut tx, id, attempt, &end).await?;
            end_step(&mut tx, id, "Stopped", "Step.STOPPED", &message, &json!({})).await?;
            executions::record_event(&mut tx, execution_id, Some(&step.step_name), "Stopped", None).await?;
        }
    }
    // Queued work means the execution goes on; only otherwise can it be done.
    if !work_queued {
        finish_if_done_by_id(&mut tx, execution_id).await?;
    }
    let claimed = match next {
        Some(next) if queued_count > 0 => {
            steps::claim_next_in(&mut tx, next.worker_id, next.lease_seconds, execution_id).await?
        }
        _ => None,
    };
    // Other workers are woken only for work this one did not take.
    let wake_others = work_queued && (claimed.is_none() || queued_count > 1);
    if wake_others || !listeners_notified {
        steps::notify(&mut tx, execution_id, wake_others).await?;
    }
    tx.commit().await?;
    let applied = if work_queued {
        Applied::AppliedQueued
    } else {
        Applied::Applied
    };
    Ok((applied, claimed))
}

async fn end_step(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    error_type: &str,
    message: &str,
    metadata: &Value,
) -> StoreResult<()> {
    sqlx::query(
        "update step_runs set status = $2, error_type = $3, failure_reason = $4, metadata = metadata || $5, \
         ended_at = now(), lease_owner = null, lease_expires_at = null, callback_deadline = null where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(error_type)
    .bind(message)
    .bind(metadata)
    .execute(conn)
    .await?;
    Ok(())
}

/// A Condition decided: the steps of the branch it did not take, and all
/// their descendants, will never run.
async fn skip_branch_not_taken(
    conn: &mut PgConnection,
    execution_id: Uuid,
    condition: &str,
    outcome: bool,
) -> StoreResult<()> {
    let not_taken: Vec<String> = sqlx::query_scalar(
        "select step_name from step_runs where execution_id = $1 and branch_of = $2 and branch_if <> $3",
    )
    .bind(execution_id)
    .bind(condition)
    .bind(outcome)
    .fetch_all(&mut *conn)
    .await?;
    steps::skip_with_descendants(conn, execution_id, &not_taken, "ConditionNotMet").await
}

/// After a leaf step succeeded without the execution lock: whoever commits
/// the last unfinished step sees, after its own commit, that nothing is left,
/// and ends the execution under the lock (checked again there, so two
/// finishers cannot both end it).
async fn finish_if_done_unlocked(pool: &PgPool, execution_id: Uuid) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    if steps::has_unfinished(&mut conn, execution_id).await? {
        return Ok(());
    }
    drop(conn);
    let mut tx = pool.begin().await?;
    let execution = executions::lock(&mut tx, execution_id).await?;
    finish_if_done(&mut tx, &execution).await?;
    steps::notify(&mut tx, execution_id, false).await?;
    tx.commit().await.map_err(Into::into)
}

/// `finish_if_done` reading the execution's current state.
async fn finish_if_done_by_id(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<()> {
    let execution = executions::get(conn, execution_id).await?;
    finish_if_done(conn, &execution).await
}

/// Ends the execution when none of its steps is left to finish.
pub async fn finish_if_done(conn: &mut PgConnection, execution: &ExecutionRow) -> StoreResult<()> {
    if execution.is_terminal() || steps::has_unfinished(conn, execution.id).await? {
        return Ok(());
    }
    let status = if execution.status == "Stopping" {
        "Stopped"
    } else {
        let failure: Option<String> = sqlx::query_scalar("select failure_reason from executions where id = $1")
            .bind(execution.id)
            .fetch_one(&mut *conn)
            .await?;
        if failure.is_some() || steps::any_failed(conn, execution.id).await? {
            "Failed"
        } else {
            "Succeeded"
        }
    };
    steps::set_execution_status(conn, execution.id, status, true).await?;
    tracing::info!(execution.id = %execution.id, status, "execution finished");
    Ok(())
}

/// Stops a running execution (SPEC 3.4). Unstarted steps are skipped,
/// waiting callbacks cancelled, running processes signalled by their workers.
pub async fn stop_execution(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
    let mut tx = pool.begin().await?;
    let execution = executions::lock(&mut tx, execution_id).await?;
    if execution.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "execution {execution_id} has already ended ({}); only a running execution can be stopped",
            execution.status
        )));
    }
    if execution.status == "Executing" {
        steps::set_execution_status(&mut tx, execution_id, "Stopping", false).await?;
        steps::skip_unstarted(&mut tx, execution_id, "ExecutionStopped").await?;
        // Callback waits hold no worker: cancel them here, their tokens stop working.
        sqlx::query(
            "with cancelled as ( \
               update step_runs set status = 'Stopped', ended_at = now(), callback_deadline = null, \
                 failure_reason = 'the execution was stopped', error_type = 'Step.STOPPED' \
               where execution_id = $1 and status = 'Executing' and callback_token is not null \
                 and lease_expires_at is null returning id, attempt, step_name), \
             attempts as ( \
               update step_attempts a set status = 'Stopped', ended_at = now(), \
                 failure_reason = 'the execution was stopped' \
               from cancelled c where a.step_run_id = c.id and a.attempt = c.attempt) \
             insert into execution_events (execution_id, step_name, status) select $1, step_name, 'Stopped' from cancelled",
        )
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "with stopping as (update step_runs set status = 'Stopping' where execution_id = $1 and status = 'Executing' \
             returning step_name) \
             insert into execution_events (execution_id, step_name, status) select $1, step_name, 'Stopping' from stopping",
        )
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
    }
    let execution = executions::get(&mut tx, execution_id).await?;
    finish_if_done(&mut tx, &execution).await?;
    sqlx::query("select pg_notify('stepwise_stop', $1::text)")
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
    steps::notify(&mut tx, execution_id, false).await?;
    let execution = executions::get(&mut tx, execution_id).await?;
    tx.commit().await?;
    Ok(execution)
}

/// Retries a Failed or Stopped execution in place (SPEC 3.4): failed,
/// stopped and not-run steps are reset and scheduled; succeeded ones kept.
pub async fn retry_execution(pool: &PgPool, execution_id: Uuid) -> StoreResult<ExecutionRow> {
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
    sqlx::query(
        "update step_runs set status = 'Pending', skip_reason = null, failure_reason = null, error_type = null, \
         properties = null, started_at = null, ended_at = null, available_at = null, lease_owner = null, \
         lease_expires_at = null, callback_token = null, callback_deadline = null \
         where execution_id = $1 and (status in ('Failed', 'Stopped') \
           or (status = 'Skipped' and skip_reason in ('UpstreamNotRun', 'ExecutionStopped')))",
    )
    .bind(execution_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update step_runs s set remaining_deps = ( \
           select count(*) from step_runs d where d.execution_id = s.execution_id \
             and d.step_name = any(s.dependencies) and d.status <> 'Succeeded') \
         where s.execution_id = $1 and s.status = 'Pending'",
    )
    .bind(execution_id)
    .execute(&mut *tx)
    .await?;
    // Steps below a branch that was not taken stay skipped.
    let blocked: Vec<String> = sqlx::query_scalar(
        "select s.step_name from step_runs s where s.execution_id = $1 and s.status = 'Pending' and exists ( \
           select 1 from step_runs d where d.execution_id = s.execution_id and d.step_name = any(s.dependencies) \
             and d.status = 'Skipped')",
    )
    .bind(execution_id)
    .fetch_all(&mut *tx)
    .await?;
    steps::skip_with_descendants(&mut tx, execution_id, &blocked, "UpstreamNotRun").await?;
    sqlx::query("update executions set failure_reason = null, ended_at = null where id = $1")
        .bind(execution_id)
        .execute(&mut *tx)
        .await?;
    steps::set_execution_status(&mut tx, execution_id, "Executing", false).await?;
    let queued = steps::promote_ready(&mut tx, execution_id, execution.max_parallel_steps).await?;
    let execution = executions::get(&mut tx, execution_id).await?;
    finish_if_done(&mut tx, &execution).await?;
    steps::notify(&mut tx, execution_id, queued > 0).await?;
    let execution = executions::get(&mut tx, execution_id).await?;
    tx.commit().await?;
    Ok(execution)
}

/// Fails the attempts whose worker stopped heartbeating, as
/// `Step.SERVICE_FAULT` (retried by default). Returns how many.
pub async fn rescue_expired_leases(pool: &PgPool) -> StoreResult<usize> {
    let expired = steps::expired_leases(pool, 100).await?;
    let mut rescued = 0;
    for (id, attempt) in expired {
        let message = format!("the worker running attempt {attempt} was lost (its lease expired)");
        let outcome = StepOutcome::failed("Step.SERVICE_FAULT", message);
        if complete_attempt(pool, id, attempt, outcome, None).await? != Applied::Stale {
            tracing::warn!(step_run.id = %id, attempt, "rescued a step whose worker was lost");
            rescued += 1;
        }
    }
    Ok(rescued)
}

/// Fails Callback steps whose `TimeoutSeconds` passed, as `Callback.TIMEOUT`.
pub async fn expire_callbacks(pool: &PgPool) -> StoreResult<usize> {
    let expired = steps::expired_callbacks(pool, 100).await?;
    let mut count = 0;
    for (id, attempt) in expired {
        let outcome = StepOutcome::failed("Callback.TIMEOUT", "no callback arrived before TimeoutSeconds");
        if complete_attempt(pool, id, attempt, outcome, None).await? != Applied::Stale {
            count += 1;
        }
    }
    Ok(count)
}

/// A Callback step starts waiting: its token is recorded and its lease
/// dropped (a wait holds no worker). Returns false when the attempt is stale.
pub async fn begin_callback(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    token: Uuid,
    timeout_seconds: Option<u64>,
) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query_scalar::<_, Uuid>(
        "update step_runs set callback_token = $3, lease_owner = null, lease_expires_at = null, \
           callback_deadline = case when $4::float8 is null then null else now() + make_interval(secs => $4) end, \
           metadata = metadata || jsonb_build_object('callback', jsonb_build_object('token', $3::text)) \
         where id = $1 and attempt = $2 and status = 'Executing' returning execution_id",
    )
    .bind(id)
    .bind(attempt)
    .bind(token)
    .bind(timeout_seconds.map(|s| s as f64))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(execution_id) = updated else {
        return Ok(false);
    };
    let step_name: String = sqlx::query_scalar("select step_name from step_runs where id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let detail = json!({"waiting_for_callback": true});
    executions::record_event(&mut tx, execution_id, Some(&step_name), "Executing", Some(detail)).await?;
    steps::notify(&mut tx, execution_id, false).await?;
    tx.commit().await?;
    Ok(true)
}

/// A client reported the result of a Callback step by its token. Unknown
/// tokens are not found; used or cancelled ones conflict.
pub async fn complete_callback(pool: &PgPool, token: Uuid, outcome: CallbackReport) -> StoreResult<()> {
    let step = {
        let mut conn = pool.acquire().await?;
        steps::find_by_callback_token(&mut conn, token).await?
    };
    let Some(step) = step else {
        return Err(StoreError::NotFound(format!(
            "no callback is waiting for token {token}"
        )));
    };
    if step.status != "Executing" {
        return Err(StoreError::Conflict(format!(
            "the token of step {:?} was already used or cancelled (the step is {})",
            step.step_name, step.status
        )));
    }
    let outcome = match outcome {
        CallbackReport::Success(outputs) => StepOutcome::Succeeded {
            properties: json!({ "OutputParameters": outputs }),
            metadata: json!({}),
            exit_code: None,
        },
        CallbackReport::Failure(reason) => StepOutcome::failed("Callback.FAILED", reason),
    };
    match complete_attempt(pool, step.id, step.attempt, outcome, None).await? {
        Applied::Applied | Applied::AppliedQueued => Ok(()),
        Applied::Stale => Err(StoreError::Conflict(format!(
            "the token of step {:?} was already used or cancelled",
            step.step_name
        ))),
    }
}

pub enum CallbackReport {
    Success(Value),
    Failure(String),
}
