//! Scheduling of trigger-style dependencies (SPEC 8, 2.3): handlers (steps
//! with a Failed, Stopped or Any DependsOn entry) are judged once all their
//! dependencies have ended. Only executions with handlers (`has_triggers`)
//! run these statements; `engine::triggers` composes them under the
//! execution's lock.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreResult;

/// Marks the handlers of a new execution: their triggers are stored and
/// their dependency count gated (see migration 0009), and the execution is
/// flagged as one that has handlers.
pub async fn mark_handlers(
    conn: &mut PgConnection,
    execution_id: Uuid,
    names: &[String],
    triggers: &[Value],
) -> StoreResult<()> {
    sqlx::query(
        "update step_runs s set triggers = h.triggers, \
           remaining_deps = case when s.status = 'Pending' then cardinality(s.dependencies) + 1 \
                                 else s.remaining_deps end \
         from unnest($2::text[], $3::jsonb[]) as h (name, triggers) \
         where s.execution_id = $1 and s.step_name = h.name",
    )
    .bind(execution_id)
    .bind(names)
    .bind(triggers)
    .execute(&mut *conn)
    .await?;
    sqlx::query("update executions set has_triggers = true where id = $1")
        .bind(execution_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether the execution has handlers.
pub async fn has_triggers(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<bool> {
    Ok(sqlx::query_scalar("select has_triggers from executions where id = $1")
        .bind(execution_id)
        .fetch_one(conn)
        .await?)
}

/// Skips, with `UpstreamNotRun`, every unstarted step that is not a handler
/// and has a dependency that ended without succeeding, and the steps below
/// it (down to the next handler, which is judged on its own). Returns how
/// many steps it skipped. A dependency that has no row is a step reused
/// from the source execution: it succeeded.
pub async fn skip_blocked(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<u64> {
    let skipped: i64 = sqlx::query_scalar(
        "with recursive roots as ( \
           select s.step_name from step_runs s where s.execution_id = $1 and s.status = 'Pending' \
             and s.triggers is null and exists ( \
               select 1 from step_runs d where d.execution_id = $1 and d.step_name = any(s.dependencies) \
                 and d.status in ('Failed', 'Stopped', 'Skipped'))), \
         down(name) as ( \
           select step_name from roots \
           union \
           select unnest(s.dependents) from step_runs s join down on s.execution_id = $1 \
             and s.step_name = down.name where s.triggers is null), \
         skipped as ( \
           update step_runs s set status = 'Skipped', skip_reason = 'UpstreamNotRun', ended_at = now(), \
             available_at = null \
           where s.execution_id = $1 and s.step_name in (select name from down) \
             and s.status in ('Pending', 'Starting') and s.triggers is null \
           returning s.step_name, s.position), \
         events as ( \
           insert into execution_events (execution_id, step_name, status, detail) \
           select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', 'UpstreamNotRun') from skipped \
           order by position) \
         select count(*) from skipped",
    )
    .bind(execution_id)
    .fetch_one(conn)
    .await?;
    Ok(skipped as u64)
}

/// What judging the handlers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Judged {
    /// Handlers whose triggers are all met: now ready (remaining_deps 0),
    /// for `promote_ready` to queue.
    pub ready: u64,
    /// Handlers skipped with `TriggerNotMet`.
    pub skipped: u64,
}

/// Judges every unstarted handler all of whose dependencies have ended: it
/// becomes ready when every trigger is met by its upstream's final status,
/// and is skipped with `TriggerNotMet` otherwise, its metadata and event
/// naming the first dependency whose trigger is not met.
pub async fn judge_handlers(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<Judged> {
    let (ready, skipped): (i64, i64) = sqlx::query_as(
        "with deps as ( \
           select s.id, d.ord, d.name, coalesce(s.triggers ->> d.name, 'Completed') as trig, \
             coalesce(u.status, 'Succeeded') as st \
           from step_runs s cross join lateral unnest(s.dependencies) with ordinality as d (name, ord) \
           left join step_runs u on u.execution_id = $1 and u.step_name = d.name \
           where s.execution_id = $1 and s.status = 'Pending' and s.triggers is not null), \
         judged as ( \
           select id, bool_and(st in ('Succeeded', 'Failed', 'Stopped', 'Skipped')) as ended, \
             (array_agg(jsonb_build_object('upstream', name, 'upstream_status', st, 'trigger', trig, \
                'not_met', format('%s ended %s; its trigger %s runs this step only if it ends %s', \
                  to_jsonb(name)::text, st, trig, case trig when 'Completed' then 'Succeeded' else trig end)) \
               order by ord) filter (where not ( \
                 (trig = 'Completed' and st = 'Succeeded') or (trig = 'Failed' and st = 'Failed') \
                 or (trig = 'Stopped' and st = 'Stopped') or trig = 'Any')))[1] as unmet \
           from deps group by id), \
         ready as ( \
           update step_runs s set remaining_deps = 0 from judged j \
           where s.id = j.id and j.ended and j.unmet is null returning s.id), \
         skipped as ( \
           update step_runs s set status = 'Skipped', skip_reason = 'TriggerNotMet', ended_at = now(), \
             metadata = s.metadata || jsonb_build_object('trigger', j.unmet) \
           from judged j where s.id = j.id and j.ended and j.unmet is not null \
           returning s.step_name, s.position, j.unmet), \
         events as ( \
           insert into execution_events (execution_id, step_name, status, detail) \
           select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', 'TriggerNotMet', \
             'reason', unmet ->> 'not_met') from skipped order by position) \
         select (select count(*) from ready), (select count(*) from skipped)",
    )
    .bind(execution_id)
    .fetch_one(conn)
    .await?;
    Ok(Judged {
        ready: ready as u64,
        skipped: skipped as u64,
    })
}

/// After a final failure or a stop: skips with `reason` every unstarted
/// step except the handlers and the steps below a handler, which go on by
/// their own rules (a handler runs if its triggers are met).
pub async fn skip_unstarted_but_handlers(conn: &mut PgConnection, execution_id: Uuid, reason: &str) -> StoreResult<()> {
    sqlx::query(
        "with recursive kept(name) as ( \
           select step_name from step_runs where execution_id = $1 and triggers is not null \
           union \
           select unnest(s.dependents) from step_runs s join kept on s.execution_id = $1 \
             and s.step_name = kept.name), \
         skipped as ( \
           update step_runs set status = 'Skipped', skip_reason = $2, ended_at = now(), available_at = null \
           where execution_id = $1 and status in ('Pending', 'Starting') \
             and step_name not in (select name from kept) returning step_name, position) \
         insert into execution_events (execution_id, step_name, status, detail) \
         select $1, step_name, 'Skipped', jsonb_build_object('skip_reason', $2::text) from skipped order by position",
    )
    .bind(execution_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retry: the reset handlers are gated again (see `mark_handlers`), to be
/// judged when their dependencies have ended in the retried run.
pub async fn regate_handlers(conn: &mut PgConnection, execution_id: Uuid) -> StoreResult<()> {
    sqlx::query(
        "update step_runs set remaining_deps = cardinality(dependencies) + 1 \
         where execution_id = $1 and status = 'Pending' and triggers is not null",
    )
    .bind(execution_id)
    .execute(conn)
    .await?;
    Ok(())
}
