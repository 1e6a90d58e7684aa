//! The writes that move a step run or an execution from one status to the
//! next. Every write of a step run that a caller decided on earlier is
//! fenced: it names the attempt (and the statuses) the caller saw and
//! reports whether it applied, so a caller never acts on a write that did
//! not happen. The lock order these statements rely on is written down in
//! `engine`'s module doc.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{steps::StepRunRow, StoreResult};

/// A step run locked together with its execution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedStep {
    pub execution_status: String,
    pub execution_max_parallel_steps: Option<i32>,
    /// The execution has handlers (see `triggers`).
    pub execution_has_triggers: bool,
    /// Attempts before the last `POST /retry` (or released at shutdown):
    /// they do not count against the retry budget.
    pub attempt_base: i32,
    #[sqlx(flatten)]
    pub step: StepRunRow,
}

/// Locks the execution of step run `id`, then the step run itself, and
/// reads both as they are now. The step row must be locked, not just read:
/// a statement that waited for the execution's lock would otherwise see
/// the step as it was before the transaction it waited for committed.
/// `None` when the step run does not exist.
pub async fn lock_with_execution(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<LockedStep>> {
    // One round trip. The row lock of the outer select is taken at the top
    // of the plan, after the materialized CTE has locked the execution, so
    // the order holds; after waiting, the outer lock re-reads the newest
    // version of the step row.
    Ok(sqlx::query_as::<_, LockedStep>(&format!(
        "with e as materialized ( \
           select status, max_parallel_steps, has_triggers from executions \
           where id = (select execution_id from step_runs where id = $1) for no key update) \
         select e.status as execution_status, e.max_parallel_steps as execution_max_parallel_steps, \
           e.has_triggers as execution_has_triggers, s.attempt_base, {} \
         from e, step_runs s where s.id = $1 for update of s",
        super::steps::STEP_COLUMNS
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// What a successful attempt reports.
pub struct Success<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub properties: &'a Value,
    pub metadata: &'a Value,
    pub exit_code: Option<i32>,
    pub log: Option<&'a [u8]>,
    /// The key and components of a run that did not use the cache.
    pub key: Option<(&'a str, &'a Value)>,
}

/// Records the success of a leaf step (no dependents, not a Condition) of an
/// execution without a `max_parallel_steps` bound, fenced by attempt, in one
/// statement and without the execution lock: such a success schedules
/// nothing, so steps of a wide execution complete side by side instead of
/// queueing on its row. Returns the execution when it applied; `None` sends
/// the caller down the locked path (a stale attempt, or a step whose
/// success schedules something). The UPDATE re-checks its fence on the
/// newest row version after any wait, so it needs no other lock.
pub async fn succeed_leaf(pool: &PgPool, success: &Success<'_>) -> StoreResult<Option<Uuid>> {
    record_success(pool, success, true).await
}

/// Records a success under the locks the caller holds (any step). Returns
/// whether it applied.
pub async fn succeed(conn: &mut PgConnection, success: &Success<'_>) -> StoreResult<bool> {
    Ok(record_success(conn, success, false).await?.is_some())
}

/// The step, its attempt, its event and the notification in one statement,
/// fenced by attempt; with `leaf_only`, only for a step whose success
/// schedules nothing (see `succeed_leaf`).
async fn record_success<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    success: &Success<'_>,
    leaf_only: bool,
) -> StoreResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "with done as ( \
           update step_runs s set status = 'Succeeded', properties = $2, metadata = s.metadata || $3, \
             ended_at = now(), lease_owner = null, lease_expires_at = null, callback_deadline = null, \
             failure_reason = null, error_type = null, \
             cache_entry = coalesce(s.cache_status in ('miss', 'bypassed'), false), \
             cache_key = coalesce($8, s.cache_key), cache_components = coalesce($9, s.cache_components) \
           where s.id = $1 and s.attempt = $4 and s.status in ('Executing', 'Stopping') \
             and (not $7 or (cardinality(s.dependents) = 0 and s.step_type <> 'Condition' and s.parent is null \
               and exists (select 1 from executions e where e.id = s.execution_id and e.max_parallel_steps is null))) \
           returning s.execution_id, s.step_name, s.cache_hit, s.reused_from), \
         attempt_end as ( \
           update step_attempts set status = 'Succeeded', exit_code = $5, log = coalesce($6, log), \
             ended_at = now() where step_run_id = $1 and attempt = $4 and exists (select 1 from done)), \
         event as ( \
           insert into execution_events (execution_id, step_name, status, detail) \
           select execution_id, step_name, 'Succeeded', \
             nullif(jsonb_strip_nulls(jsonb_build_object('cache_hit', cache_hit, 'reused_from', reused_from)), \
               '{}'::jsonb) from done) \
         select d.execution_id from done d, \
           lateral (select pg_notify('stepwise_execution', d.execution_id::text)) n",
    )
    .bind(success.id)
    .bind(success.properties)
    .bind(success.metadata)
    .bind(success.attempt)
    .bind(success.exit_code)
    .bind(success.log)
    .bind(leaf_only)
    .bind(success.key.map(|k| k.0))
    .bind(success.key.map(|k| k.1))
    .fetch_optional(executor)
    .await?)
}

pub struct AttemptEnd<'a> {
    pub status: &'a str,
    pub error_type: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub log: Option<&'a [u8]>,
}

/// Ends attempt `attempt` of step run `id` if it has not ended yet.
pub async fn end_attempt(conn: &mut PgConnection, id: Uuid, attempt: i32, end: &AttemptEnd<'_>) -> StoreResult<bool> {
    let ended = sqlx::query(
        "update step_attempts set status = $3, error_type = $4, failure_reason = $5, exit_code = $6, \
         log = coalesce($7, log), ended_at = now() where step_run_id = $1 and attempt = $2 and ended_at is null",
    )
    .bind(id)
    .bind(attempt)
    .bind(end.status)
    .bind(end.error_type)
    .bind(end.failure_reason)
    .bind(end.exit_code)
    .bind(end.log)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// How a step run ends for good.
pub struct StepEnd<'a> {
    pub status: &'a str,
    pub error_type: &'a str,
    pub message: &'a str,
    pub metadata: &'a Value,
}

/// Ends step run `id`, fenced by the attempt and a running status. A step
/// that ends this way was not reused: the `reused_from` an early cut-off
/// wrote before its worker was lost is dropped (so when it is queued again).
pub async fn end_step(conn: &mut PgConnection, id: Uuid, attempt: i32, end: &StepEnd<'_>) -> StoreResult<bool> {
    let ended = sqlx::query(
        "update step_runs set status = $3, error_type = $4, failure_reason = $5, metadata = metadata || $6, \
         ended_at = now(), lease_owner = null, lease_expires_at = null, callback_deadline = null, \
         reused_from = null \
         where id = $1 and attempt = $2 and status in ('Executing', 'Stopping')",
    )
    .bind(id)
    .bind(attempt)
    .bind(end.status)
    .bind(end.error_type)
    .bind(end.message)
    .bind(end.metadata)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// Queues step run `id` again after its attempt `attempt` failed, in
/// `delay_seconds`; fenced by the attempt and the Executing status.
pub async fn requeue_for_retry(
    conn: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    delay_seconds: f64,
    end: &StepEnd<'_>,
) -> StoreResult<bool> {
    let queued = sqlx::query(
        "update step_runs set status = 'Starting', available_at = now() + make_interval(secs => $3), \
         lease_owner = null, lease_expires_at = null, callback_token = null, callback_deadline = null, \
         failure_reason = $4, error_type = $5, metadata = (metadata - 'callback') || $6, reused_from = null \
         where id = $1 and attempt = $2 and status = 'Executing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(delay_seconds)
    .bind(end.message)
    .bind(end.error_type)
    .bind(end.metadata)
    .execute(conn)
    .await?;
    Ok(queued.rows_affected() == 1)
}

/// Gives back attempt `attempt` of a step claimed by `worker_id`, which is
/// shutting down, so another worker can take the step at once instead of
/// waiting for the lease to expire. The attempt stays in the history as
/// interrupted (its number, directories and log are never reused) and does
/// not count against the retry budget. Returns whether it applied.
pub async fn release(
    conn: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    worker_id: Uuid,
    log: Option<&[u8]>,
) -> StoreResult<bool> {
    let released: Option<(Uuid, String)> = sqlx::query_as(
        "with released as ( \
           update step_runs set status = 'Starting', available_at = now(), lease_owner = null, \
             lease_expires_at = null, attempt_base = attempt_base + 1 \
           where id = $1 and attempt = $2 and status = 'Executing' and lease_owner = $3 \
           returning execution_id, step_name), \
         ended as ( \
           update step_attempts set status = 'Failed', error_type = 'Step.SERVICE_FAULT', \
             failure_reason = 'interrupted by shutdown; the step was released to another worker', \
             log = coalesce($4, log), ended_at = now() \
           where step_run_id = $1 and attempt = $2 and ended_at is null and exists (select 1 from released)) \
         select execution_id, step_name from released",
    )
    .bind(id)
    .bind(attempt)
    .bind(worker_id)
    .bind(log)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((execution_id, step_name)) = released else {
        return Ok(false);
    };
    let detail = serde_json::json!({"released_at_shutdown": true, "attempt": attempt});
    super::executions::record_event(conn, execution_id, Some(&step_name), "Starting", Some(detail)).await?;
    sqlx::query("select pg_notify('stepwise_work', '')")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// What a heartbeat learnt about the attempts it was asked to renew.
pub struct Heartbeat {
    /// `(id, attempt, status)` of the leases renewed.
    pub held: Vec<(Uuid, i32, String)>,
    /// Step runs locked by another transaction at that moment: not renewed
    /// this time, and not lost either.
    pub busy: Vec<Uuid>,
}

/// Renews the leases of this worker's steps. Rows another transaction holds
/// are skipped rather than waited for: a heartbeat holds no lock while it
/// waits, so it can take part in no deadlock.
pub async fn heartbeat(pool: &PgPool, worker_id: Uuid, running: &[Uuid], lease_seconds: f64) -> StoreResult<Heartbeat> {
    let rows: Vec<(Uuid, i32, String, bool)> = sqlx::query_as(
        "with locked as ( \
           select id from step_runs where id = any($2) and lease_owner = $1 \
             and status in ('Executing', 'Stopping') and lease_expires_at is not null \
           for update skip locked), \
         renewed as ( \
           update step_runs s set lease_expires_at = now() + make_interval(secs => $3) \
           from locked where s.id = locked.id returning s.id, s.attempt, s.status) \
         select id, attempt, status, true from renewed \
         union all \
         select s.id, s.attempt, s.status, false from step_runs s where s.id = any($2) and s.lease_owner = $1 \
           and s.status in ('Executing', 'Stopping') and s.id not in (select id from locked)",
    )
    .bind(worker_id)
    .bind(running)
    .bind(lease_seconds)
    .fetch_all(pool)
    .await?;
    let mut beat = Heartbeat {
        held: Vec::new(),
        busy: Vec::new(),
    };
    for (id, attempt, status, renewed) in rows {
        if renewed {
            beat.held.push((id, attempt, status));
        } else {
            beat.busy.push(id);
        }
    }
    Ok(beat)
}

/// A Callback step starts waiting: its token is recorded and its lease
/// dropped (a wait holds no worker). Fenced by attempt; returns the
/// execution and step name when it applied.
pub async fn begin_callback(
    conn: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    token: Uuid,
    timeout_seconds: Option<f64>,
    sqs_queue_url: Option<&str>,
) -> StoreResult<Option<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "update step_runs set callback_token = $3, lease_owner = null, lease_expires_at = null, \
           callback_deadline = case when $4::float8 is null then null else now() + make_interval(secs => $4) end, \
           metadata = metadata || jsonb_build_object('callback', \
             jsonb_strip_nulls(jsonb_build_object('token', $3::text, 'sqs_queue_url', $5::text))) \
         where id = $1 and attempt = $2 and status = 'Executing' returning execution_id, step_name",
    )
    .bind(id)
    .bind(attempt)
    .bind(token)
    .bind(timeout_seconds)
    .bind(sqs_queue_url)
    .fetch_optional(conn)
    .await?)
}

/// Sets the execution's status and records its event; `detail` is the
/// event's (the failure reason of a final Failed).
pub async fn set_execution_status(
    conn: &mut PgConnection,
    execution_id: Uuid,
    status: &str,
    terminal: bool,
    detail: Option<Value>,
) -> StoreResult<()> {
    sqlx::query("update executions set status = $2, ended_at = case when $3 then now() else null end where id = $1")
        .bind(execution_id)
        .bind(status)
        .bind(terminal)
        .execute(&mut *conn)
        .await?;
    sqlx::query("insert into execution_events (execution_id, status, detail) values ($1, $2, $3)")
        .bind(execution_id)
        .bind(status)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records the execution's failure reason unless an earlier failure did.
pub async fn set_failure_reason(
    conn: &mut PgConnection,
    execution_id: Uuid,
    reason: &str,
    by_fail_step: bool,
) -> StoreResult<()> {
    sqlx::query(
        "update executions set failure_reason = coalesce(failure_reason, $2), \
         failed_by_fail_step = failed_by_fail_step or $3 where id = $1",
    )
    .bind(execution_id)
    .bind(reason)
    .bind(by_fail_step)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stop, under the execution's lock: waiting Callback steps are cancelled
/// (their tokens stop working) and running steps go Stopping, for their
/// workers to end. One statement: a Callback step whose wait begins while
/// it runs is judged on its newest row (re-read after the row lock), so it
/// cannot slip between "cancel the waits" and "stop the rest".
pub async fn stop_running_steps(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<()> {
    // A Callback step waiting for its token (it holds no lease).
    const WAITING: &str = "(s.callback_token is not null and s.lease_expires_at is null)";
    sqlx::query(&format!(
        "with changed as ( \
           update step_runs s set \
             status = case when {WAITING} then 'Stopped' else 'Stopping' end, \
             ended_at = case when {WAITING} then now() else s.ended_at end, \
             callback_deadline = case when {WAITING} then null else s.callback_deadline end, \
             failure_reason = case when {WAITING} then 'the execution was stopped' else s.failure_reason end, \
             error_type = case when {WAITING} then 'Step.STOPPED' else s.error_type end \
           where s.execution_id = $1 and s.status = 'Executing' \
           returning s.id, s.attempt, s.step_name, s.status, s.position), \
         attempts as ( \
           update step_attempts a set status = 'Stopped', ended_at = now(), \
             failure_reason = 'the execution was stopped' \
           from changed c where c.status = 'Stopped' and a.step_run_id = c.id and a.attempt = c.attempt \
             and a.ended_at is null) \
         insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, status, case when status = 'Stopped' then jsonb_build_object( \
           'error_type', 'Step.STOPPED', 'failure_reason', 'the execution was stopped') end \
         from changed order by position"
    ))
    .bind(execution_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retry, under the execution's lock: failed, stopped and not-run steps
/// are reset, each with a fresh retry budget (their earlier attempts stay
/// in the history), and their dependency counts recomputed. Returns the
/// reset steps that still sit below a skipped step (handlers, which a
/// skipped upstream may trigger, are left to be judged).
pub async fn reset_for_retry(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<Vec<String>> {
    sqlx::query(
        "update step_runs set status = 'Pending', skip_reason = null, failure_reason = null, error_type = null, \
         properties = null, started_at = null, ended_at = null, available_at = null, lease_owner = null, \
         lease_expires_at = null, callback_token = null, callback_deadline = null, \
         attempt_base = attempt, first_started_at = null, metadata = metadata - 'callback' - 'early_cutoff' \
         where execution_id = $1 and (status in ('Failed', 'Stopped') \
           or (status = 'Skipped' and skip_reason in ('UpstreamNotRun', 'ExecutionStopped', 'TriggerNotMet')))",
    )
    .bind(execution_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "update step_runs s set remaining_deps = ( \
           select count(*) from step_runs d where d.execution_id = s.execution_id \
             and d.step_name = any(s.dependencies) and d.status <> 'Succeeded') \
         where s.execution_id = $1 and s.status = 'Pending'",
    )
    .bind(execution_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("update executions set failure_reason = null, ended_at = null where id = $1")
        .bind(execution_id)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "select s.step_name from step_runs s where s.execution_id = $1 and s.status = 'Pending' \
           and s.triggers is null and exists ( \
           select 1 from step_runs d where d.execution_id = s.execution_id and d.step_name = any(s.dependencies) \
             and d.status = 'Skipped')",
    )
    .bind(execution_id)
    .fetch_all(conn)
    .await?)
}

/// The steps of a Condition's branch that it did not take.
pub async fn branch_not_taken(
    conn: &mut PgConnection,
    execution_id: Uuid,
    condition: &str,
    outcome: bool,
) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "select step_name from step_runs where execution_id = $1 and branch_of = $2 and branch_if <> $3",
    )
    .bind(execution_id)
    .bind(condition)
    .bind(outcome)
    .fetch_all(conn)
    .await?)
}

/// Running executions none of whose steps is left to finish: only a lost
/// finish check leaves one so, and maintenance repairs it.
pub async fn executions_left_open(pool: &PgPool, limit: i64) -> StoreResult<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "select e.id from executions e where e.status in ('Executing', 'Stopping') \
         and not exists (select 1 from step_runs s where s.execution_id = e.id \
           and s.status in ('Pending', 'Starting', 'Executing', 'Stopping')) \
         limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
