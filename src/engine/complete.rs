//! The end of an attempt: recorded under the execution's and the step's
//! locks (or, for a leaf's success, by one fenced statement), with all the
//! scheduling it causes in the same transaction.

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    finish_if_done_by_id, finish_if_done_unlocked, retrying,
    triggers::{self, Ended},
    Applied, NextClaim, StepOutcome,
};
use crate::{
    domain::retry::{next_retry, RetryPolicy},
    store::{
        executions,
        steps::{self, ClaimedStep},
        transitions::{self, AttemptEnd, LockedStep, StepEnd, Success},
        StoreResult,
    },
};

/// One report of an attempt's end.
pub(super) struct Report<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub outcome: &'a StepOutcome,
    pub log: Option<&'a [u8]>,
    pub next: Option<NextClaim>,
    pub may_be_leaf: bool,
}

impl Report<'_> {
    /// The success this report records, if it is one.
    fn success(&self) -> Option<Success<'_>> {
        match self.outcome {
            StepOutcome::Succeeded {
                properties,
                metadata,
                exit_code,
                key,
            } => Some(Success {
                key: key.as_ref().map(|k| (k.key.as_str(), &k.components)),
                id: self.id,
                attempt: self.attempt,
                properties,
                metadata,
                exit_code: *exit_code,
                log: self.log,
            }),
            _ => None,
        }
    }
}

/// Applies `report`, running the whole transaction again when PostgreSQL
/// aborted it for a deadlock or a serialization failure.
pub(super) async fn complete(pool: &PgPool, report: &Report<'_>) -> StoreResult<(Applied, Option<ClaimedStep>)> {
    retrying(|| complete_once(pool, report)).await
}

async fn complete_once(pool: &PgPool, report: &Report<'_>) -> StoreResult<(Applied, Option<ClaimedStep>)> {
    let (id, attempt) = (report.id, report.attempt);
    if let Some(success) = report.success().filter(|_| report.may_be_leaf) {
        if let Some(execution_id) = transitions::succeed_leaf(pool, &success).await? {
            finish_if_done_unlocked(pool, execution_id).await?;
            return Ok((Applied::Applied, None));
        }
    }
    let mut tx = pool.begin().await?;
    let Some(locked) = transitions::lock_with_execution(&mut tx, id).await? else {
        return Ok((Applied::Stale, None));
    };
    let step = &locked.step;
    if step.attempt != attempt || !matches!(step.status.as_str(), "Executing" | "Stopping") {
        tracing::info!(step_run.id = %id, attempt, current_attempt = step.attempt, status = %step.status, "dropping a stale step result");
        // The report may be a retry of one whose success committed and whose
        // finish check was lost with the connection: check again.
        finish_if_done_by_id(&mut tx, step.execution_id).await?;
        tx.commit().await?;
        return Ok((Applied::Stale, None));
    }
    // A process ended by its worker while no stop was asked for (the worker
    // believed its lease lost) is a service fault, retried like one.
    let stopped_unasked;
    let outcome = match report.outcome {
        StepOutcome::Stopped { message } if step.status != "Stopping" => {
            stopped_unasked = StepOutcome::failed("Step.SERVICE_FAULT", format!("{message} (no stop was requested)"));
            &stopped_unasked
        }
        other => other,
    };
    let effect = match outcome {
        StepOutcome::Succeeded { .. } => {
            let success = report.success().expect("the outcome is a success");
            apply_success(&mut tx, &locked, &success).await?
        }
        StepOutcome::Failed { .. } => apply_failure(&mut tx, &locked, outcome, report.log).await?,
        StepOutcome::Stopped { message } => apply_stop(&mut tx, &locked, message, report.log).await?,
    };
    let Some(effect) = effect else {
        // Under both locks a fenced write cannot miss; if one did, nothing
        // of this report may stand.
        tracing::error!(step_run.id = %id, attempt, "a fenced write under the step's lock matched nothing; dropping the report");
        return Ok((Applied::Stale, None));
    };
    let execution_id = step.execution_id;
    let mut queued = effect.queued;
    if effect.ended {
        // A step of a ForEach iteration hands on its iteration's slot; a
        // ForEach with nothing left to run ends (after the last step of its
        // last iteration, or after a failure or stop skipped what was left).
        let handed = super::for_each::after_step(&mut tx, &locked).await?;
        queued += handed.queued;
        let failed = !matches!(outcome, StepOutcome::Succeeded { .. });
        if handed.may_settle || failed {
            queued += super::for_each::settle(&mut tx, execution_id).await?;
        }
    }
    // Queued work means the execution goes on; only otherwise can it be done.
    if queued == 0 {
        finish_if_done_by_id(&mut tx, execution_id).await?;
    }
    let claimed = match report.next {
        Some(next) if queued > 0 && (effect.dependents_queued || queued > effect.queued) => {
            steps::claim_next_in(&mut tx, next.worker_id, next.lease_seconds, execution_id).await?
        }
        _ => None,
    };
    // Other workers are woken only for work this one did not take.
    let wake_others = queued > 0 && (claimed.is_none() || queued > 1);
    if wake_others || !effect.listeners_notified {
        steps::notify(&mut tx, execution_id, wake_others).await?;
    }
    tx.commit().await?;
    let applied = if queued > 0 {
        Applied::AppliedQueued
    } else {
        Applied::Applied
    };
    Ok((applied, claimed))
}

/// What applying a report scheduled.
pub(super) struct Effect {
    /// Steps of the execution queued by it (dependents, or this step again).
    pub queued: u64,
    /// The queued steps are dependents (a chain may take one at once); a
    /// retry waits for its delay instead.
    pub dependents_queued: bool,
    /// The write already notified the execution's listeners.
    pub listeners_notified: bool,
    /// The step ended for good (it is not queued again for a retry).
    pub ended: bool,
}

/// `None` when a fenced write did not apply.
pub(super) async fn apply_success(
    conn: &mut PgConnection,
    locked: &LockedStep,
    success: &Success<'_>,
) -> StoreResult<Option<Effect>> {
    let step = &locked.step;
    let execution_id = step.execution_id;
    if !transitions::succeed(conn, success).await? {
        return Ok(None);
    }
    let mut queued = 0;
    if step.step_type == "Condition" {
        let outcome = success
            .properties
            .get("Outcome")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // Whatever became of the execution meanwhile: a failure or a stop
        // may have skipped both branches while this Condition was being
        // evaluated; now that it has an outcome, the other branch was not
        // taken (SPEC 3.1), and a retry must not run it.
        let not_taken = transitions::branch_not_taken(conn, execution_id, &step.step_name, outcome).await?;
        steps::skip_with_descendants(conn, execution_id, &not_taken, "ConditionNotMet").await?;
        steps::mark_not_taken(conn, execution_id, &not_taken).await?;
    }
    // In an execution with handlers, the steps left after a failure or a
    // stop (handlers and the steps below them) go on being scheduled.
    if locked.execution_status == "Executing" || locked.execution_has_triggers {
        queued = match locked.execution_max_parallel_steps {
            // Unbounded: dependents whose last dependency this was are queued in the same statement.
            None => steps::decrement_and_queue(conn, execution_id, &step.dependents).await?,
            Some(max) => {
                steps::decrement_dependents(conn, execution_id, &step.dependents).await?;
                steps::promote_ready(conn, execution_id, Some(max)).await?
            }
        };
        if locked.execution_has_triggers {
            queued += triggers::settle(conn, execution_id, locked.execution_max_parallel_steps, Ended::Success).await?;
        }
    }
    Ok(Some(Effect {
        queued,
        dependents_queued: true,
        listeners_notified: true,
        ended: true,
    }))
}

pub(super) async fn apply_failure(
    conn: &mut PgConnection,
    locked: &LockedStep,
    outcome: &StepOutcome,
    log: Option<&[u8]>,
) -> StoreResult<Option<Effect>> {
    let StepOutcome::Failed {
        error_type,
        message,
        metadata,
        exit_code,
        by_fail_step,
    } = outcome
    else {
        unreachable!("apply_failure is given failures only");
    };
    let step = &locked.step;
    let (id, attempt, execution_id) = (step.id, step.attempt, step.execution_id);
    let retry_in = if locked.execution_status == "Executing" && step.status == "Executing" && !by_fail_step {
        let policies: Vec<RetryPolicy> = serde_json::from_value(step.retry_policies.clone()).unwrap_or_default();
        let first_started = step.first_started_at.unwrap_or_else(Utc::now);
        // Attempts before a retry of the execution do not count (SPEC 8).
        let attempts_in_budget = (attempt - locked.attempt_base).max(1) as u32;
        next_retry(&policies, error_type, attempts_in_budget, first_started, Utc::now())
    } else {
        None
    };
    let end = AttemptEnd {
        status: "Failed",
        error_type: Some(error_type),
        failure_reason: Some(message),
        exit_code: *exit_code,
        log,
    };
    if !transitions::end_attempt(conn, id, attempt, &end).await? {
        return Ok(None);
    }
    if let Some(delay) = retry_in {
        let end = StepEnd {
            status: "Starting",
            error_type,
            message,
            metadata,
        };
        if !transitions::requeue_for_retry(conn, id, attempt, delay.as_secs_f64(), &end).await? {
            return Ok(None);
        }
        let detail = json!({"retry_in_seconds": delay.as_secs_f64(), "error_type": error_type, "failure_reason": message, "attempt": attempt});
        executions::record_event(conn, execution_id, Some(&step.step_name), "Starting", Some(detail)).await?;
        return Ok(Some(Effect {
            queued: 1,
            dependents_queued: false,
            listeners_notified: false,
            ended: false,
        }));
    }
    let status = if step.status == "Stopping" { "Stopped" } else { "Failed" };
    let end = StepEnd {
        status,
        error_type,
        message,
        metadata,
    };
    if !transitions::end_step(conn, id, attempt, &end).await? {
        return Ok(None);
    }
    let detail = json!({"error_type": error_type, "failure_reason": message});
    executions::record_event(conn, execution_id, Some(&step.step_name), status, Some(detail)).await?;
    if locked.execution_status == "Executing" {
        let reason = if *by_fail_step {
            message.clone()
        } else {
            format!("step {:?} failed: {error_type}: {message}", step.step_name)
        };
        // The first failure stays the execution's reason: a handler that
        // fails afterwards does not replace it.
        transitions::set_failure_reason(conn, execution_id, &reason, *by_fail_step).await?;
        // No new step starts after a final failure (SPEC 3.2), but handlers.
        triggers::skip_unstarted(conn, execution_id, locked.execution_has_triggers, "UpstreamNotRun").await?;
    }
    let queued = if locked.execution_has_triggers {
        triggers::settle(conn, execution_id, locked.execution_max_parallel_steps, Ended::Other).await?
    } else {
        0
    };
    Ok(Some(Effect {
        queued,
        dependents_queued: queued > 0,
        listeners_notified: false,
        ended: true,
    }))
}

pub(super) async fn apply_stop(
    conn: &mut PgConnection,
    locked: &LockedStep,
    message: &str,
    log: Option<&[u8]>,
) -> StoreResult<Option<Effect>> {
    let step = &locked.step;
    let end = AttemptEnd {
        status: "Stopped",
        error_type: None,
        failure_reason: Some(message),
        exit_code: None,
        log,
    };
    if !transitions::end_attempt(conn, step.id, step.attempt, &end).await? {
        return Ok(None);
    }
    let end = StepEnd {
        status: "Stopped",
        error_type: "Step.STOPPED",
        message,
        metadata: &json!({}),
    };
    if !transitions::end_step(conn, step.id, step.attempt, &end).await? {
        return Ok(None);
    }
    let detail = json!({"error_type": "Step.STOPPED", "failure_reason": message});
    executions::record_event(conn, step.execution_id, Some(&step.step_name), "Stopped", Some(detail)).await?;
    let queued = if locked.execution_has_triggers {
        triggers::settle(
            conn,
            step.execution_id,
            locked.execution_max_parallel_steps,
            Ended::Other,
        )
        .await?
    } else {
        0
    };
    Ok(Some(Effect {
        queued,
        dependents_queued: queued > 0,
        listeners_notified: false,
        ended: true,
    }))
}
