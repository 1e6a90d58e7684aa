-- ForEach (SPEC 8): a ForEach step, once runnable, resolves its items and
-- inserts one row per body step per item, named `F[i].Body`. These rows are
-- ordinary step runs (claimed, retried, cached, logged) that also name
-- their ForEach (`parent`), their iteration, its item, and the body step
-- they were made from (`local_name`, with its place in the body).
-- `slot_wait` holds an iteration back until MaxConcurrency leaves it room:
-- such a row is never queued, whatever its dependency count.
alter table step_runs
    add column parent text,
    add column iteration integer,
    add column item jsonb,
    add column local_name text,
    add column body_index integer,
    add column slot_wait boolean not null default false;

-- The iterations of one ForEach that hold a slot and have steps left to
-- finish (at most MaxConcurrency of them), and those waiting for a slot:
-- whether an iteration or the whole ForEach has ended, and which iteration
-- goes next, is read here after each of its steps ends.
create index step_runs_iterations_active on step_runs (execution_id, parent, iteration)
    where parent is not null and not slot_wait and status in ('Pending', 'Starting', 'Executing', 'Stopping');
create index step_runs_iterations_waiting on step_runs (execution_id, parent, iteration)
    where slot_wait and status = 'Pending';
-- Paging through the iterations of one ForEach, in item order.
create index step_runs_iterations on step_runs (execution_id, parent, iteration, body_index)
    where parent is not null;
-- ForEach steps waiting for their iterations: few, read after every change.
create index step_runs_for_each_waiting on step_runs (execution_id)
    where step_type = 'ForEach' and status in ('Executing', 'Stopping');

-- A body step's cache entries are shared by all iterations (and all
-- executions): they are looked up by the body step's name.
drop index step_runs_cache;
drop index step_runs_cache_by_step;
create index step_runs_cache on step_runs (pipeline_id, (coalesce(local_name, step_name)), cache_key, ended_at desc)
    where cache_entry;
create index step_runs_cache_by_step on step_runs (pipeline_id, (coalesce(local_name, step_name)), ended_at desc)
    where cache_entry;

drop index step_runs_ready;
create index step_runs_ready on step_runs (execution_id, position)
    where status = 'Pending' and remaining_deps = 0 and not slot_wait;

create or replace view execution_steps as
select s.id, s.execution_id, s.pipeline_id, s.step_name, s.step_type, s.position, s.status, s.skip_reason,
       s.arguments, s.retry_policies, s.cache_config, s.dependencies, s.dependents, s.branch_of, s.branch_if,
       s.attempt, s.lease_owner, s.callback_token, s.callback_deadline, s.failure_reason, s.error_type,
       s.properties, s.metadata, s.first_started_at, s.started_at, s.ended_at, s.cache_key, s.cache_components,
       s.cache_status, s.cache_miss_reason, s.cache_warnings, s.cache_hit, s.reused_from, s.artifacts_dir,
       s.parent, s.iteration, s.item, s.local_name, s.body_index
from step_runs s
union all
select o.id, e.id, e.pipeline_id, r.step_name, o.step_type, r.position, 'Succeeded', null,
       o.arguments, o.retry_policies, o.cache_config, o.dependencies, o.dependents, o.branch_of, o.branch_if,
       0, null, null, null, null, null,
       coalesce(o.properties, '{}'::jsonb), o.metadata, e.started_at, e.started_at, e.started_at, null, null,
       null, null, null, null,
       jsonb_build_object('source_execution_arn', e.selective_execution ->> 'source_execution_arn',
                          'source_step_run_id', o.id,
                          'reason', case when e.selective_execution -> 'requested_steps' = '"changed"'::jsonb
                                         then 'unchanged since the source execution'
                                         else 'not selected; reused from the source execution' end),
       o.artifacts_dir,
       null, null, null, null, null
from executions e
cross join lateral unnest(e.reused_step_names, e.reused_step_runs, e.reused_step_positions) as r (step_name, run, position)
join step_runs o on o.id = r.run;
