//! Step runs: the scheduling statements (promote, skip, decrement, finish),
//! the claim, leases, attempts and reads. Each function is one or two
//! set-based statements; `engine` composes them into transactions.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{StoreError, StoreResult};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRunRow {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub pipeline_id: Uuid,
    pub step_name: String,
    pub step_type: String,
    pub position: i32,
    pub status: String,
    pub skip_reason: Option<String>,
    pub arguments: Value,
    pub retry_policies: Value,
    pub cache_config: Option<Value>,
    pub dependencies: Vec<String>,
    pub dependents: Vec<String>,
    pub branch_of: Option<String>,
    pub branch_if: Option<bool>,
    pub attempt: i32,
    pub lease_owner: Option<Uuid>,
    pub callback_token: Option<Uuid>,
    pub callback_deadline: Option<DateTime<Utc>>,
    pub failure_reason: Option<String>,
    pub error_type: Option<String>,
    pub properties: Option<Value>,
    pub metadata: Value,
    pub first_started_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub cache_key: Option<String>,
    pub cache_components: Option<Value>,
    pub cache_status: Option<String>,
    pub cache_miss_reason: Option<String>,
    pub cache_warnings: Option<Value>,
    pub cache_hit: Option<Value>,
    pub reused_from: Option<Value>,
    pub artifacts_dir: Option<String>,
    /// For a step of a ForEach iteration: the ForEach, the iteration, its
    /// item and the body step this row runs.
    pub parent: Option<String>,
    pub iteration: Option<i32>,
    pub item: Option<Value>,
    pub local_name: Option<String>,
}

pub(super) const STEP_COLUMNS: &str =
    "s.id, s.execution_id, s.pipeline_id, s.step_name, s.step_type, s.position, s.status, \
    s.skip_reason, s.arguments, s.retry_policies, s.cache_config, s.dependencies, s.dependents, s.branch_of, \
    s.branch_if, s.attempt, s.lease_owner, s.callback_token, s.callback_deadline, s.failure_reason, s.error_type, \
    s.properties, s.metadata, s.first_started_at, s.started_at, s.ended_at, s.cache_key, s.cache_components, \
    s.cache_status, s.cache_miss_reason, s.cache_warnings, s.cache_hit, s.reused_from, s.artifacts_dir, \
    s.parent, s.iteration, s.item, s.local_name";

/// Statuses of a step that has not reached its end.
pub const UNFINISHED: [&str; 4] = ["Pending", "Starting", "Executing", "Stopping"];

/// The steps of the execution, without the steps of ForEach iterations
/// (`iterations` lists those).
pub async fn list(pool: &PgPool, execution_id: Uuid) -> StoreResult<Vec<StepRunRow>> {
    Ok(sqlx::query_as::<_, StepRunRow>(&format!(
        "select {STEP_COLUMNS} from execution_steps s where s.execution_id = $1 and s.parent is null \
         order by s.position"
    ))
    .bind(execution_id)
    .fetch_all(pool)
    .await?)
}

/// A page of the execution's top-level steps in pipeline order: at most
/// `limit` after the step at `(position, name)`.
pub async fn list_page(
    pool: &PgPool,
    execution_id: Uuid,
    after: Option<(i32, String)>,
    limit: i64,
) -> StoreResult<Vec<StepRunRow>> {
    let (position, name) = after.unzip();
    Ok(sqlx::query_as::<_, StepRunRow>(&format!(
        "select {STEP_COLUMNS} from execution_steps s where s.execution_id = $1 and s.parent is null \
           and ($2::int is null or (s.position, s.step_name) > ($2, $3)) \
         order by s.position, s.step_name limit $4"
    ))
    .bind(execution_id)
    .bind(position)
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn get_by_name(pool: &PgPool, execution_id: Uuid, name: &str) -> StoreResult<StepRunRow> {
    let row = sqlx::query_as::<_, StepRunRow>(&format!(
        "select {STEP_COLUMNS} from execution_steps s where s.execution_id = $1 and s.step_name = $2"
    ))
    .bind(execution_id)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(row);
    }
    // An iteration step of a ForEach this execution reused is one of the
    // reused run's, as `iterations` lists it under this execution.
    sqlx::query_as::<_, StepRunRow>(&format!(
        "select {STEP_COLUMNS} from execution_steps v join step_runs p on p.id = v.id \
           join step_runs s on s.execution_id = p.execution_id and s.parent = p.step_name \
         where v.execution_id = $1 and v.step_type = 'ForEach' and p.execution_id <> $1 and s.step_name = $2"
    ))
    .bind(execution_id)
    .bind(name)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("execution {execution_id} has no step {name:?}")))
}

/// How many steps of each body step of each ForEach of the execution (a
/// reused ForEach's: the run it reused) are in each status:
/// `(ForEach, body step, status, count)`.
pub async fn iteration_counts(pool: &PgPool, execution_id: Uuid) -> StoreResult<Vec<(String, String, String, i64)>> {
    Ok(sqlx::query_as(
        "select p.step_name, s.local_name, s.status, count(*) from execution_steps v \
           join step_runs p on p.id = v.id \
           join step_runs s on s.execution_id = p.execution_id and s.parent = p.step_name \
         where v.execution_id = $1 and v.step_type = 'ForEach' \
         group by p.step_name, s.local_name, s.status",
    )
    .bind(execution_id)
    .fetch_all(pool)
    .await?)
}

/// A page of the iteration steps of the ForEach run `parent_run`, in item
/// order then body order, after the `(iteration, body_index)` given.
pub async fn iterations(
    pool: &PgPool,
    parent_run: Uuid,
    after: Option<(i32, i32)>,
    limit: i64,
) -> StoreResult<Vec<(StepRunRow, i32)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        step: StepRunRow,
        body_index: i32,
    }
    let rows = sqlx::query_as::<_, Row>(&format!(
        "select {STEP_COLUMNS}, s.body_index from step_runs p join step_runs s \
           on s.execution_id = p.execution_id and s.parent = p.step_name \
         where p.id = $1 and ($2::int is null or (s.iteration, s.body_index) > ($2, $3)) \
         order by s.iteration, s.body_index limit $4"
    ))
    .bind(parent_run)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.step, r.body_index)).collect())
}

pub async fn find_by_callback_token(conn: &mut PgConnection, token: Uuid) -> StoreResult<Option<StepRunRow>> {
    Ok(sqlx::query_as::<_, StepRunRow>(&format!(
        "select {STEP_COLUMNS} from step_runs s where s.callback_token = $1"
    ))
    .bind(token)
    .fetch_optional(conn)
    .await?)
}

/// Moves ready steps (all dependencies succeeded) to Starting, at most as
/// many as `max_parallel` leaves room for. Returns how many were queued.
pub async fn promote_ready(conn: &mut PgConnection, execution_id: Uuid, max_parallel: Option<i32>) -> StoreResult<u64> {
    let room: Option<i64> = match max_parallel {
        None => None,
        Some(max) => {
            let active: i64 = sqlx::query_scalar(
                // A ForEach waiting for its iterations holds no slot: its iterations do.
                "select count(*) from step_runs where execution_id = $1 and status in ('Starting', 'Executing', 'Stopping') \
                 and step_type <> 'ForEach'",
            )
            .bind(execution_id)
            .fetch_one(&mut *conn)
            .await?;
            Some((max as i64 - active).max(0))
        }
    };
    if room == Some(0) {
        return Ok(0);
    }
    let queued: i64 = sqlx::query_scalar(
        "with ready as ( \
           select id from step_runs where execution_id = $1 and status = 'Pending' and remaining_deps = 0 \
             and not slot_wait \
           order by position, iteration nulls first, body_index limit $2), \
         queued as ( \
           update step_runs s set status = 'Starting', available_at = now() from ready where s.id = ready.id \
           returning s.step_name, s.position), \
         events as ( \
           insert into execution_events (execution_id, step_name, status) \
           select $1, step_name, 'Starting' from queued order by position) \
         select count(*) from queued",
    )
    .bind(execution_id)
    .bind(room)
    .fetch_one(conn)
    .await?;
    Ok(queued as u64)
}

/// One dependency of each of `dependents` has succeeded.
pub async fn decrement_dependents(
    conn: &mut PgConnection,
    execution_id: Uuid,
    dependents: &[String],
) -> StoreResult<()> {
    if dependents.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update step_runs set remaining_deps = remaining_deps - 1 \
         where execution_id = $1 and step_name = any($2) and status = 'Pending'",
    )
    .bind(execution_id)
    .bind(dependents)
    .execute(conn)
    .await?;
    Ok(())
}

/// One dependency of each of `dependents` has succeeded; those for which it
/// was the last are queued at once. Only for executions without a
/// `max_parallel_steps` bound. Returns how many were queued.
pub async fn decrement_and_queue(
    conn: &mut PgConnection,
    execution_id: Uuid,
    dependents: &[String],
) -> StoreResult<u64> {
    if dependents.is_empty() {
        return Ok(0);
    }
    let queued: i64 = sqlx::query_scalar(
        "with counted as ( \
           update step_runs set remaining_deps = remaining_deps - 1, \
             status = case when remaining_deps = 1 and not slot_wait then 'Starting' else status end, \
             available_at = case when remaining_deps = 1 and not slot_wait then now() else available_at end \
           where execution_id = $1 and step_name = any($2) and status = 'Pending' \
           returning step_name, status, position), \
         events as ( \
           insert into execution_events (execution_id, step_name, status) \
           select $1, step_name, 'Starting' from counted where status = 'Starting' order by position) \
         select count(*) from counted where status = 'Starting'",
    )
    .bind(execution_id)
    .bind(dependents)
    .fetch_one(conn)
    .await?;
    Ok(queued as u64)
}

/// Skips the unfinished `roots` with `reason` and every unstarted step
/// downstream of them with `UpstreamNotRun`, down to the handlers (steps
/// with a trigger, see `triggers`), which are judged on their own.
pub async fn skip_with_descendants(
    conn: &mut PgConnection,
    execution_id: Uuid,
    roots: &[String],
    reason: &str,
) -> StoreResult<()> {
    if roots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "with recursive down(name) as ( \
           select unnest($2::text[]) \
           union \
           select unnest(s.dependents) from step_runs s join down on s.execution_id = $1 and s.step_name = down.name \
             where s.triggers is null or s.step_name = any($2)), \
         skipped as ( \
           update step_runs s set status = 'Skipped', ended_at = now(), \
             skip_reason = case when s.step_name = any($2) then $3 else 'UpstreamNotRun' end \
           where s.execution_id = $1 and s.step_name in (select name from down) and s.status in ('Pending', 'Starting') \
             and (s.triggers is null or s.step_name = any($2)) \
           returning s.step_name, s.skip_reason, s.position) \
         insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', skip_reason) from skipped order by position",
    )
    .bind(execution_id)
    .bind(roots)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives the untaken branch steps `roots` that a failure or a stop skipped
/// while their Condition was being evaluated (`UpstreamNotRun`,
/// `ExecutionStopped`) the reason they have once it has an outcome:
/// `ConditionNotMet`, which a retry does not reset.
pub async fn mark_not_taken(conn: &mut PgConnection, execution_id: Uuid, roots: &[String]) -> StoreResult<()> {
    if roots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "with marked as ( \
           update step_runs set skip_reason = 'ConditionNotMet' \
           where execution_id = $1 and step_name = any($2) and status = 'Skipped' \
             and skip_reason in ('UpstreamNotRun', 'ExecutionStopped') \
           returning step_name, position) \
         insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', 'ConditionNotMet') from marked \
         order by position",
    )
    .bind(execution_id)
    .bind(roots)
    .execute(conn)
    .await?;
    Ok(())
}

/// Skips every step of the execution that has not started.
pub async fn skip_unstarted(conn: &mut PgConnection, execution_id: Uuid, reason: &str) -> StoreResult<()> {
    sqlx::query(
        "with skipped as ( \
           update step_runs set status = 'Skipped', skip_reason = $2, ended_at = now(), available_at = null \
           where execution_id = $1 and status in ('Pending', 'Starting') returning step_name, position) \
         insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', $2::text) from skipped order by position",
    )
    .bind(execution_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn has_unfinished(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from step_runs where execution_id = $1 \
         and status in ('Pending', 'Starting', 'Executing', 'Stopping'))",
    )
    .bind(execution_id)
    .fetch_one(conn)
    .await?)
}

pub async fn any_failed(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from step_runs where execution_id = $1 and status in ('Failed', 'Stopped'))",
    )
    .bind(execution_id)
    .fetch_one(conn)
    .await?)
}

/// The step whose failure ended the execution (the first to fail or be
/// stopped) with its error type, for the execution's final event.
pub async fn first_failure(
    conn: &mut PgConnection,
    execution_id: Uuid,
) -> StoreResult<Option<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "select step_name, error_type from step_runs where execution_id = $1 and status in ('Failed', 'Stopped') \
         order by ended_at nulls last, position limit 1",
    )
    .bind(execution_id)
    .fetch_optional(conn)
    .await?)
}

/// Wakes listeners: workers when steps were queued, and followers of the
/// execution (events, long polls). Delivered when the transaction commits.
pub async fn notify(conn: &mut PgConnection, execution_id: Uuid, work_queued: bool) -> StoreResult<()> {
    sqlx::query(
        "select pg_notify('stepwise_execution', $1::text), \
         case when $2 then pg_notify('stepwise_work', '') end",
    )
    .bind(execution_id)
    .bind(work_queued)
    .execute(conn)
    .await?;
    Ok(())
}

/// Tells every process's workers to end the running steps of a stopped
/// execution. Delivered when the transaction commits.
pub async fn notify_stop(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<()> {
    sqlx::query("select pg_notify('stepwise_stop', $1::text)")
        .bind(execution_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The property document of one step run (of any execution).
pub async fn properties(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Value>> {
    Ok(
        sqlx::query_scalar::<_, Option<Value>>("select properties from step_runs where id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// A claimed step with what the worker needs to run it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedStep {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub pipeline_id: Uuid,
    pub step_name: String,
    pub step_type: String,
    pub attempt: i32,
    pub arguments: Value,
    pub cache_config: Option<Value>,
    pub dependencies: Vec<String>,
    /// The execution's parameters: not fetched by the claim (a large
    /// document would travel with every step), but by the worker, once per
    /// execution (`worker::parameters`).
    #[sqlx(skip)]
    pub parameters: Arc<Value>,
    pub pipeline_name: String,
    pub execution_started_at: DateTime<Utc>,
    pub cache_mode: String,
    /// A selected step of a selective execution, or an iteration of a
    /// selected ForEach.
    pub selected: bool,
    /// The selective execution asked its selected steps to look up the
    /// cache (`cache_mode: "use"`).
    pub cache_lookup: bool,
    /// The property documents of its dependencies, by step name.
    pub upstream: Value,
    /// Its success schedules nothing: no dependents, not a Condition.
    pub leaf: bool,
    /// Early cut-off: the source run it is compared with, and the source
    /// execution (see `engine::decide::CutOff`).
    pub cutoff_run: Option<Uuid>,
    pub cutoff_execution: Option<Uuid>,
    /// For a step of a ForEach iteration: the ForEach, the iteration, its
    /// item and the body step it runs.
    pub parent: Option<String>,
    pub iteration: Option<i32>,
    pub item: Option<Value>,
    pub local_name: Option<String>,
}

impl ClaimedStep {
    /// The name its cache entries go by: a body step's, shared by all
    /// iterations of its ForEach.
    pub fn cache_name(&self) -> &str {
        self.local_name.as_deref().unwrap_or(&self.step_name)
    }

    /// Its dependencies by the names its expressions read them by: a body
    /// step's siblings by their body names.
    pub fn dependency_names(&self) -> Vec<String> {
        let prefix = match (&self.parent, self.iteration) {
            (Some(parent), Some(i)) => format!("{parent}[{i}]."),
            _ => return self.dependencies.clone(),
        };
        self.dependencies
            .iter()
            .map(|d| d.strip_prefix(&prefix).unwrap_or(d).to_string())
            .collect()
    }
}

/// Claims up to `limit` queued steps in one short transaction: the rows are
/// locked with SKIP LOCKED so concurrent workers never take the same step,
/// and each claim starts a new attempt under a lease. Fair across
/// executions, round robin: each execution's oldest queued step comes
/// before any execution's second, and among those, the execution served
/// longest ago (or never) goes first; one execution's thousand runnable
/// steps do not hold back another's one.
pub async fn claim(pool: &PgPool, worker_id: Uuid, limit: i64, lease_seconds: f64) -> StoreResult<Vec<ClaimedStep>> {
    claim_with(pool, worker_id, limit, lease_seconds, None).await
}

/// The claim, inside the caller's transaction and limited to one execution:
/// a worker reporting a step takes one of the steps it made runnable in the
/// same commit, unless another execution has a step waiting (that one is
/// the claim loop's, for fairness).
pub async fn claim_next_in(
    conn: &mut PgConnection,
    worker_id: Uuid,
    lease_seconds: f64,
    execution_id: Uuid,
) -> StoreResult<Option<ClaimedStep>> {
    Ok(claim_with(conn, worker_id, 1, lease_seconds, Some(execution_id))
        .await?
        .pop())
}

async fn claim_with<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    worker_id: Uuid,
    limit: i64,
    lease_seconds: f64,
    execution_id: Option<Uuid>,
) -> StoreResult<Vec<ClaimedStep>> {
    Ok(sqlx::query_as::<_, ClaimedStep>(
        "with ready as ( \
           select id, execution_id, available_at, position, \
             row_number() over (partition by execution_id order by available_at, position) as turn \
           from step_runs where status = 'Starting' and available_at <= now() \
             and ($4::uuid is null or execution_id = $4)), \
         served as ( \
           select x.execution_id, (select max(m.started_at) from step_runs m \
             where m.execution_id = x.execution_id) as last \
           from (select distinct execution_id from ready) x), \
         picked as ( \
           select s.id from ready r join served v on v.execution_id = r.execution_id \
             join step_runs s on s.id = r.id \
           where s.status = 'Starting' and s.available_at <= now() \
             and ($4::uuid is null or not exists (select 1 from step_runs o where o.status = 'Starting' \
               and o.available_at <= now() and o.execution_id <> $4)) \
           order by r.turn, v.last nulls first, r.available_at, r.position \
           limit $1 for update of s skip locked), \
         claimed as ( \
           update step_runs s set status = 'Executing', attempt = s.attempt + 1, lease_owner = $2, \
             lease_expires_at = now() + make_interval(secs => $3), started_at = now(), \
             first_started_at = coalesce(s.first_started_at, now()), available_at = null, reused_from = null \
           from picked where s.id = picked.id \
           returning s.id, s.execution_id, s.pipeline_id, s.step_name, s.step_type, s.attempt, s.arguments, \
             s.cache_config, s.dependencies, s.position, s.cutoff_run, s.cutoff_execution, \
             s.parent, s.iteration, s.item, s.local_name, \
             cardinality(s.dependents) = 0 and s.step_type <> 'Condition' and s.parent is null as leaf), \
         attempts as ( \
           insert into step_attempts (step_run_id, attempt, status, worker_id) \
           select id, attempt, 'Executing', $2 from claimed), \
         events as ( \
           insert into execution_events (execution_id, step_name, status, detail) \
           select execution_id, step_name, 'Executing', jsonb_build_object('attempt', attempt) from claimed \
           order by position) \
         select c.id, c.execution_id, c.pipeline_id, c.step_name, c.step_type, c.attempt, c.arguments, \
           c.cache_config, c.dependencies, c.leaf, c.cutoff_run, c.cutoff_execution, \
           c.parent, c.iteration, c.item, c.local_name, \
           p.name as pipeline_name, \
           e.started_at as execution_started_at, e.cache_mode, \
           coalesce((e.selective_execution->'selected_steps') ? coalesce(c.parent, c.step_name), false) as selected, \
           coalesce((e.selective_execution->>'cache_lookup')::boolean, false) as cache_lookup, \
           (select coalesce(jsonb_object_agg(coalesce(d.local_name, d.step_name), d.properties), '{}'::jsonb) \
             from execution_steps d where d.execution_id = c.execution_id and d.step_name = any(c.dependencies) \
               and d.properties is not null) as upstream \
         from claimed c join executions e on e.id = c.execution_id join pipelines p on p.id = e.pipeline_id",
    )
    .bind(limit)
    .bind(worker_id)
    .bind(lease_seconds)
    .bind(execution_id)
    .fetch_all(executor)
    .await?)
}

/// Seconds until the next queued step becomes due (negative: overdue).
pub async fn next_available_in(pool: &PgPool) -> StoreResult<Option<f64>> {
    Ok(sqlx::query_scalar(
        "select extract(epoch from min(available_at) - now())::float8 from step_runs where status = 'Starting'",
    )
    .fetch_one(pool)
    .await?)
}

/// Steps whose lease ran out: their worker is gone.
pub async fn expired_leases(pool: &PgPool, limit: i64) -> StoreResult<Vec<(Uuid, i32)>> {
    Ok(sqlx::query_as::<_, (Uuid, i32)>(
        "select id, attempt from step_runs where lease_expires_at < now() \
         and status in ('Executing', 'Stopping') order by lease_expires_at limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Callback steps whose wait ran out.
pub async fn expired_callbacks(pool: &PgPool, limit: i64) -> StoreResult<Vec<(Uuid, i32)>> {
    Ok(sqlx::query_as::<_, (Uuid, i32)>(
        "select id, attempt from step_runs where callback_deadline < now() and status = 'Executing' \
         order by callback_deadline limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub status: String,
    pub error_type: Option<String>,
    pub failure_reason: Option<String>,
    pub worker_id: Option<Uuid>,
    pub exit_code: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

pub async fn attempts(pool: &PgPool, step_run_id: Uuid) -> StoreResult<Vec<AttemptRow>> {
    Ok(sqlx::query_as::<_, AttemptRow>(
        "select attempt, status, error_type, failure_reason, worker_id, exit_code, started_at, ended_at \
         from step_attempts where step_run_id = $1 order by attempt",
    )
    .bind(step_run_id)
    .fetch_all(pool)
    .await?)
}

/// Where a step run was run: its execution, that execution's pipeline and
/// the run's attempts, for pointing a reusing execution at the log.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunOrigin {
    pub execution_id: Uuid,
    pub pipeline_name: String,
    pub step_name: String,
    pub attempt: i32,
    /// The run this one took its outputs from by early cut-off, if any.
    pub reused_run: Option<Uuid>,
}

/// How many early cut-offs in a row `run_origin` follows.
const ORIGIN_HOPS: usize = 100;

/// The run that really ran: `step_run_id`, or, when that run was itself
/// reused by early cut-off, the run it reused (and so on). `None` when a
/// run on the way no longer exists.
pub async fn run_origin(pool: &PgPool, step_run_id: Uuid) -> StoreResult<Option<RunOrigin>> {
    let mut id = step_run_id;
    for _ in 0..ORIGIN_HOPS {
        let origin = sqlx::query_as::<_, RunOrigin>(
            "select s.execution_id, p.name as pipeline_name, s.step_name, s.attempt, \
               (s.reused_from ->> 'source_step_run_id')::uuid as reused_run from step_runs s \
             join pipelines p on p.id = s.pipeline_id where s.id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        match origin {
            Some(RunOrigin {
                reused_run: Some(next), ..
            }) => id = next,
            other => return Ok(other),
        }
    }
    Ok(None)
}

/// The captured log of an attempt, if it has ended.
pub async fn attempt_log(pool: &PgPool, step_run_id: Uuid, attempt: i32) -> StoreResult<Option<Option<Vec<u8>>>> {
    Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
        "select log from step_attempts where step_run_id = $1 and attempt = $2",
    )
    .bind(step_run_id)
    .bind(attempt)
    .fetch_optional(pool)
    .await?)
}

/// The source run an early cut-off compares with: its outputs, the key
/// components it recorded, and the property documents of `dependencies` in
/// the execution it ran in (what it read).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CutoffSource {
    pub status: String,
    pub properties: Option<Value>,
    pub metadata: Value,
    pub cache_components: Option<Value>,
    pub upstream: Value,
}

pub async fn cutoff_source(pool: &PgPool, run: Uuid, dependencies: &[String]) -> StoreResult<Option<CutoffSource>> {
    Ok(sqlx::query_as::<_, CutoffSource>(
        "select s.status, s.properties, s.metadata, s.cache_components, \
           (select coalesce(jsonb_object_agg(coalesce(d.local_name, d.step_name), d.properties), '{}'::jsonb) \
             from execution_steps d where d.execution_id = s.execution_id and d.properties is not null \
               and ((d.parent is null and d.step_name = any($2)) \
                 or (d.parent = s.parent and d.iteration = s.iteration and d.local_name = any($2)))) \
           as upstream \
         from step_runs s where s.id = $1",
    )
    .bind(run)
    .bind(dependencies)
    .fetch_optional(pool)
    .await?)
}

/// Records that the current attempt takes the outputs of an earlier run
/// (early cut-off), fenced by attempt like every write of a running step.
pub async fn record_reuse(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    reused_from: &Value,
    key: (&str, &Value),
) -> StoreResult<bool> {
    Ok(sqlx::query(
        "update step_runs set reused_from = $3, cache_key = $4, cache_components = $5 \
         where id = $1 and attempt = $2 and status = 'Executing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(reused_from)
    .bind(key.0)
    .bind(key.1)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The log of an attempt as stored now, and whether the attempt has ended.
/// `None` when there is no such attempt.
pub async fn attempt_log_state(
    pool: &PgPool,
    step_run_id: Uuid,
    attempt: i32,
) -> StoreResult<Option<(Option<Vec<u8>>, bool)>> {
    Ok(
        sqlx::query_as("select log, ended_at is not null from step_attempts where step_run_id = $1 and attempt = $2")
            .bind(step_run_id)
            .bind(attempt)
            .fetch_optional(pool)
            .await?,
    )
}

/// Writes the log of a running attempt: `bytes` appended to what is stored
/// (`append`) or replacing it, and wakes the log's followers. Returns false
/// once the attempt has ended (its final log is written by its end).
pub async fn write_running_log(
    pool: &PgPool,
    step_run_id: Uuid,
    attempt: i32,
    append: bool,
    bytes: &[u8],
) -> StoreResult<bool> {
    let written: Option<bool> = sqlx::query_scalar(
        "with w as ( \
           update step_attempts set log = case when $3 then coalesce(log, ''::bytea) || $4 else $4 end \
           where step_run_id = $1 and attempt = $2 and ended_at is null returning 1) \
         select true from w, lateral (select pg_notify('stepwise_log', $1::text)) n",
    )
    .bind(step_run_id)
    .bind(attempt)
    .bind(append)
    .bind(bytes)
    .fetch_optional(pool)
    .await?;
    Ok(written.is_some())
}
