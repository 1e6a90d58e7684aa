//! The scheduler. Every state transition of an execution is one transaction
//! that first locks the execution row, applies the change, and does all the
//! scheduling it causes (skips, dependency counts, queueing, finishing) with
//! set-based statements, then notifies listeners at commit.
//!
//! # Fences
//!
//! A transition of a step run is applied only if the step is still in the
//! attempt and status its caller saw, judged under a lock on the step row
//! itself (`transitions::lock_with_execution`), and every fenced write
//! reports whether it applied. A stale report is dropped and logged; an API
//! caller whose action lost the race gets 409.
//!
//! # Lock order
//!
//! 1. the pipeline row (start, update, delete of a pipeline);
//! 2. the execution row, `for no key update` (`executions::lock`): every
//!    transition of an execution takes it first;
//! 3. step rows of that execution, then their attempt rows.
//!
//! Statements that do not hold the execution lock touch step rows in only
//! three ways, none of which can close a cycle: the claim locks with `skip
//! locked` (it never waits); a leaf's success and a release update one row
//! by id; the heartbeat locks with `skip locked`. Inserting an event or an
//! attempt takes a key-share lock on its parent row, which `for no key
//! update` does not block. A deadlock or serialization failure PostgreSQL
//! reports anyway runs the transaction again (`retrying`), never a 5xx.
//!
//! # Termination
//!
//! Every path that may end the last unfinished step runs the finish check,
//! which is idempotent; a report judged stale runs it too (it may retry a
//! report whose commit succeeded and whose check was lost), and
//! maintenance repairs any execution whose steps have all ended
//! (`repair_open_executions`).

mod complete;
pub mod control;
pub mod decide;
pub mod definitions;
pub mod for_each;
pub mod hashing;
mod known;
pub mod plan;
mod plan_iterations;
pub mod request;
pub mod retention;
pub mod selective;
pub mod start;
pub mod tokens;
mod triggers;

use std::{future::Future, time::Duration};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use crate::domain::outcome::{RunKey, StepOutcome};
pub use control::{begin_callback, callback_used, complete_callback, retry_execution, stop_execution, CallbackReport};

use crate::store::{
    self,
    executions::{self, ExecutionRow},
    steps, transitions, StoreError, StoreResult,
};

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
    let report = complete::Report {
        id,
        attempt,
        outcome: &outcome,
        log,
        next: None,
        may_be_leaf: true,
    };
    Ok(complete::complete(pool, &report).await?.0)
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
    let report = complete::Report {
        id,
        attempt,
        outcome: &outcome,
        log,
        next: Some(next),
        may_be_leaf: leaf,
    };
    complete::complete(pool, &report).await
}

/// Runs the transaction `attempt` builds, again while PostgreSQL aborts it
/// for a deadlock or a serialization failure (a few times, with a short
/// growing pause): such an abort says nothing about the request.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(StoreError::Database(e)) if store::is_retryable_conflict(&e) && tries < 8 => {
                tries += 1;
                tracing::info!(error = %e, tries, "transaction aborted by a conflict; running it again");
                tokio::time::sleep(Duration::from_millis(5 << tries.min(6))).await;
            }
            other => return other,
        }
    }
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

/// Ends the execution when none of its steps is left to finish. Every
/// caller passes the row as read in its own transaction after its last
/// write, so its `failure_reason` is current.
pub async fn finish_if_done(conn: &mut PgConnection, execution: &ExecutionRow) -> StoreResult<()> {
    if execution.is_terminal() || steps::has_unfinished(conn, execution.id).await? {
        return Ok(());
    }
    let status = if execution.status == "Stopping" {
        "Stopped"
    } else {
        if execution.failure_reason.is_some() || steps::any_failed(conn, execution.id).await? {
            "Failed"
        } else {
            "Succeeded"
        }
    };
    // A follower of the events learns why from the final event itself.
    let detail = if status == "Failed" {
        let failed = steps::first_failure(conn, execution.id).await?;
        let (step, error_type) = failed.unzip();
        let reason = execution.failure_reason.clone().unwrap_or_else(|| match &step {
            Some(step) => format!("step {step:?} failed"),
            None => "a step failed".to_string(),
        });
        Some(serde_json::json!({"failure_reason": reason, "error_type": error_type.flatten(), "failed_step": step}))
    } else {
        None
    };
    transitions::set_execution_status(conn, execution.id, status, true, detail).await?;
    tracing::info!(execution.id = %execution.id, status, "execution finished");
    Ok(())
}

/// Ends the executions whose steps have all ended but which are still
/// Executing or Stopping (a finish check lost with its connection).
/// Returns how many it ended.
pub async fn repair_open_executions(pool: &PgPool) -> StoreResult<usize> {
    let mut repaired = 0;
    for execution_id in transitions::executions_left_open(pool, 100).await? {
        let ended = retrying(|| async {
            let mut tx = pool.begin().await?;
            let execution = executions::lock(&mut tx, execution_id).await?;
            finish_if_done(&mut tx, &execution).await?;
            let ended = executions::get(&mut tx, execution_id).await?.is_terminal() && !execution.is_terminal();
            steps::notify(&mut tx, execution_id, false).await?;
            tx.commit().await?;
            Ok(ended)
        })
        .await?;
        if ended {
            tracing::warn!(execution.id = %execution_id, "ended an execution whose steps had all ended");
            repaired += 1;
        }
    }
    Ok(repaired)
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
