//! Trigger-style dependencies (SPEC 8, 2.3), composed under the execution's
//! lock. A handler (a step with a Failed, Stopped or Any DependsOn entry)
//! is not queued by its dependencies' successes: once all of them have
//! ended it runs if every trigger is met by its upstream's final status,
//! and is Skipped with `TriggerNotMet` otherwise. A final failure or a stop
//! skips the unstarted steps but the handlers and the steps below them,
//! which go on by these rules: the execution ends once they have ended, and
//! keeps its first failure reason. Executions without handlers never run
//! any of this (`has_triggers`).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{steps, triggers, StoreResult};

/// What ended before `settle` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// A success: it can make handlers ready, never block a step.
    Success,
    /// A failure, a stop or skips: steps may be blocked as well.
    Other,
}

/// Skips what can no longer run and judges the handlers whose dependencies
/// have all ended, until nothing changes (a skipped handler can block the
/// steps below it, and they another handler), then queues the handlers
/// made ready. Returns how many steps it queued.
pub(super) async fn settle(
    conn: &mut PgConnection,
    execution_id: Uuid,
    max_parallel: Option<i32>,
    ended: Ended,
) -> StoreResult<u64> {
    let mut blocked_possible = ended == Ended::Other;
    let mut ready = 0;
    loop {
        if blocked_possible {
            triggers::skip_blocked(conn, execution_id).await?;
        }
        let judged = triggers::judge_handlers(conn, execution_id).await?;
        ready += judged.ready;
        if judged.skipped == 0 {
            break;
        }
        blocked_possible = true;
    }
    if ready == 0 {
        return Ok(0);
    }
    steps::promote_ready(conn, execution_id, max_parallel).await
}

/// No plain step starts after a final failure or a stop (SPEC 3.2, 3.4);
/// handlers and the steps below them are left to `settle`.
pub(super) async fn skip_unstarted(
    conn: &mut PgConnection,
    execution_id: Uuid,
    has_triggers: bool,
    reason: &str,
) -> StoreResult<()> {
    if has_triggers {
        triggers::skip_unstarted_but_handlers(conn, execution_id, reason).await
    } else {
        steps::skip_unstarted(conn, execution_id, reason).await
    }
}
