//! ForEach iterations: the rows of each body step in each iteration, the
//! slots that `MaxConcurrency` hands out, and the reads that end a ForEach.
//! Every statement here runs under the execution's lock (see `engine`).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreResult;

/// Statuses of a step that has not reached its end (as `steps::UNFINISHED`).
const OPEN: &str = "('Pending', 'Starting', 'Executing', 'Stopping')";

/// A ForEach that has made its iterations now waits for them: its lease is
/// dropped (it holds no worker) and its metadata says how many items it has.
/// Fenced by attempt; returns whether it applied.
pub async fn begin_waiting(conn: &mut PgConnection, id: Uuid, attempt: i32, metadata: &Value) -> StoreResult<bool> {
    Ok(sqlx::query(
        "update step_runs set lease_owner = null, lease_expires_at = null, metadata = metadata || $3 \
         where id = $1 and attempt = $2 and status in ('Executing', 'Stopping')",
    )
    .bind(id)
    .bind(attempt)
    .bind(metadata)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Gives a slot to as many iterations of ForEach `parent` waiting for one
/// (lowest index first) as its `MaxConcurrency` leaves room for. Their rows
/// can then be queued (`steps::promote_ready`).
pub async fn fill_slots(conn: &mut PgConnection, execution_id: Uuid, parent: &str) -> StoreResult<u64> {
    Ok(sqlx::query(&format!(
        "with f as ( \
           select coalesce((arguments ->> 'MaxConcurrency')::int, 1) as max from step_runs \
           where execution_id = $1 and step_name = $2), \
         active as ( \
           select count(distinct iteration) as n from step_runs where execution_id = $1 and parent = $2 \
             and not slot_wait and status in {OPEN}), \
         next as ( \
           select distinct iteration from step_runs where execution_id = $1 and parent = $2 and slot_wait \
             and status = 'Pending' \
           order by iteration limit greatest((select max from f) - (select n from active), 0)) \
         update step_runs set slot_wait = false where execution_id = $1 and parent = $2 and slot_wait \
           and iteration in (select iteration from next)"
    ))
    .bind(execution_id)
    .bind(parent)
    .execute(conn)
    .await?
    .rows_affected())
}

/// After a step of iteration `iteration` of `parent` ended: when that
/// iteration has no step left to finish, its slot goes to the next
/// waiting iterations (as `fill_slots`), and with `queue` (the execution
/// has no `max_parallel_steps`) their ready steps are queued in the same
/// statement. One statement: it runs after every step of every iteration.
/// Returns whether the iteration has ended, how many iterations got a
/// slot and how many steps were queued.
pub async fn hand_on_slot(
    conn: &mut PgConnection,
    execution_id: Uuid,
    parent: &str,
    iteration: i32,
    queue: bool,
) -> StoreResult<(bool, i64, i64)> {
    Ok(sqlx::query_as(&format!(
        "with closed as ( \
           select not exists (select 1 from step_runs where execution_id = $1 and parent = $2 \
             and iteration = $3 and not slot_wait and status in {OPEN}) as yes), \
         f as ( \
           select coalesce((arguments ->> 'MaxConcurrency')::int, 1) as max from step_runs \
           where execution_id = $1 and step_name = $2 and (select yes from closed)), \
         active as ( \
           select count(distinct iteration) as n from step_runs where execution_id = $1 and parent = $2 \
             and not slot_wait and status in {OPEN} and (select yes from closed)), \
         next as ( \
           select distinct iteration from step_runs where execution_id = $1 and parent = $2 and slot_wait \
             and status = 'Pending' and (select yes from closed) \
           order by iteration limit greatest(coalesce((select max from f), 0) - (select n from active), 0)), \
         released as ( \
           update step_runs s set slot_wait = false, \
             status = case when $4 and s.remaining_deps = 0 then 'Starting' else s.status end, \
             available_at = case when $4 and s.remaining_deps = 0 then now() else s.available_at end \
           where s.execution_id = $1 and s.parent = $2 and s.slot_wait and s.status = 'Pending' \
             and s.iteration in (select iteration from next) \
           returning s.step_name, s.status, s.position, s.iteration, s.body_index), \
         events as ( \
           insert into execution_events (execution_id, step_name, status) \
           select $1, step_name, 'Starting' from released where status = 'Starting' \
           order by iteration, body_index) \
         select (select yes from closed), (select count(*) from next), \
           (select count(*) from released where status = 'Starting')"
    ))
    .bind(execution_id)
    .bind(parent)
    .bind(iteration)
    .bind(queue)
    .fetch_one(conn)
    .await?)
}

/// A ForEach whose iterations have all ended, so it ends now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settled {
    pub id: Uuid,
    pub step_name: String,
}

/// The ForEach steps of the execution that wait for iterations none of
/// which is left to run (none left at all, or none that may start).
pub async fn settled(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<Vec<Settled>> {
    Ok(sqlx::query_as::<_, Settled>(&format!(
        "select p.id, p.step_name from step_runs p \
         where p.execution_id = $1 and p.step_type = 'ForEach' and p.status in ('Executing', 'Stopping') \
           and p.lease_expires_at is null and p.metadata ? 'for_each' \
           and not exists (select 1 from step_runs c where c.execution_id = $1 and c.parent = p.step_name \
             and not c.slot_wait and c.status in {OPEN}) \
           and not exists (select 1 from step_runs c where c.execution_id = $1 and c.parent = p.step_name \
             and c.slot_wait and c.status = 'Pending') \
         order by p.position"
    ))
    .bind(execution_id)
    .fetch_all(conn)
    .await?)
}

/// One iteration as it ended: each body step's property document by body
/// step name, and how its steps ended.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndedIteration {
    pub iteration: i32,
    pub outputs: Value,
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub stopped: i64,
}

pub async fn ended_iterations(
    conn: &mut PgConnection,
    execution_id: Uuid,
    parent: &str,
) -> StoreResult<Vec<EndedIteration>> {
    Ok(sqlx::query_as::<_, EndedIteration>(
        "select iteration, \
           coalesce(jsonb_object_agg(local_name, properties) filter (where properties is not null), '{}'::jsonb) \
             as outputs, \
           count(*) as total, count(*) filter (where status = 'Succeeded') as succeeded, \
           count(*) filter (where status = 'Failed') as failed, \
           count(*) filter (where status = 'Stopped') as stopped \
         from step_runs where execution_id = $1 and parent = $2 group by iteration order by iteration",
    )
    .bind(execution_id)
    .bind(parent)
    .fetch_all(conn)
    .await?)
}

/// The first step of the ForEach's iterations that did not succeed, with
/// its status and why, for the ForEach's own failure reason.
pub async fn first_unsuccessful(
    conn: &mut PgConnection,
    execution_id: Uuid,
    parent: &str,
) -> StoreResult<Option<(String, String, Option<String>, Option<String>)>> {
    Ok(sqlx::query_as(
        "select step_name, status, coalesce(failure_reason, skip_reason), error_type from step_runs \
         where execution_id = $1 and parent = $2 and status <> 'Succeeded' \
         order by case status when 'Failed' then 0 when 'Stopped' then 1 else 2 end, iteration, body_index limit 1",
    )
    .bind(execution_id)
    .bind(parent)
    .fetch_optional(conn)
    .await?)
}

/// The run of ForEach `step` that execution `execution_id`'s selective
/// source holds (following a reuse to the run that made it), and the
/// execution that run belongs to. `None` without a source, or when the
/// source has no such run.
pub async fn source_run(conn: &mut PgConnection, execution_id: Uuid, step: &str) -> StoreResult<Option<(Uuid, Uuid)>> {
    Ok(sqlx::query_as(
        "select o.id, o.execution_id from executions e \
         join execution_steps v on v.step_name = $2 and v.execution_id = ( \
           case when e.selective_execution ->> 'source_execution_arn' ~ '/execution/[0-9a-fA-F-]{36}$' \
             then split_part(e.selective_execution ->> 'source_execution_arn', '/execution/', 2)::uuid end) \
         join step_runs o on o.id = v.id \
         where e.id = $1 and o.step_type = 'ForEach'",
    )
    .bind(execution_id)
    .bind(step)
    .fetch_optional(conn)
    .await?)
}

/// The run of ForEach `step` in execution `source` (following a reuse to
/// the run that made it) and the execution that run belongs to.
pub async fn run_in(conn: &mut PgConnection, source: Uuid, step: &str) -> StoreResult<Option<(Uuid, Uuid)>> {
    Ok(sqlx::query_as(
        "select o.id, o.execution_id from execution_steps v join step_runs o on o.id = v.id \
         where v.execution_id = $1 and v.step_name = $2 and o.step_type = 'ForEach'",
    )
    .bind(source)
    .bind(step)
    .fetch_optional(conn)
    .await?)
}

/// One iteration of a ForEach run: its item, whether all its steps
/// succeeded, and the run of each body step by body step name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceIteration {
    pub iteration: i32,
    pub item: Option<Value>,
    pub succeeded: bool,
    pub runs: Value,
    /// The key each body step recorded, by body step name (for the plan).
    pub keys: Value,
}

pub async fn source_iterations(
    conn: &mut PgConnection,
    execution_id: Uuid,
    parent: &str,
) -> StoreResult<Vec<SourceIteration>> {
    Ok(sqlx::query_as::<_, SourceIteration>(
        "select iteration, (array_agg(item))[1] as item, bool_and(status = 'Succeeded') as succeeded, \
           jsonb_object_agg(local_name, id) as runs, \
           coalesce(jsonb_object_agg(local_name, cache_key) filter (where cache_key is not null), '{}'::jsonb) \
             as keys \
         from step_runs where execution_id = $1 and parent = $2 group by iteration order by iteration",
    )
    .bind(execution_id)
    .bind(parent)
    .fetch_all(conn)
    .await?)
}

/// A retry of the execution: each ForEach that had made its iterations and
/// was reset waits for them again under a new attempt, and its reset
/// iterations wait for slots. Returns the ForEach steps reopened.
pub async fn reopen(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "with parents as ( \
           update step_runs set status = 'Executing', attempt = attempt + 1, attempt_base = attempt + 1, \
             started_at = now(), first_started_at = coalesce(first_started_at, now()), ended_at = null, \
             lease_owner = null, lease_expires_at = null, available_at = null \
           where execution_id = $1 and step_type = 'ForEach' and status = 'Pending' and metadata ? 'for_each' \
           returning id, attempt, step_name, position), \
         attempts as ( \
           insert into step_attempts (step_run_id, attempt, status) select id, attempt, 'Executing' from parents), \
         events as ( \
           insert into execution_events (execution_id, step_name, status, detail) \
           select $1, step_name, 'Executing', jsonb_build_object('attempt', attempt, 'retried_iterations', true) \
           from parents order by position), \
         waits as ( \
           update step_runs c set slot_wait = true from parents \
           where c.execution_id = $1 and c.parent = parents.step_name and c.status = 'Pending') \
         select step_name from parents",
    )
    .bind(execution_id)
    .fetch_all(conn)
    .await?)
}
