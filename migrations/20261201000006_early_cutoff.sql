-- Early cut-off (selective execution with "changed"): a step selected only
-- because an upstream step changed names the run of the source execution
-- it is compared with once it is runnable. When its resolved inputs equal
-- that run's, it takes that run's outputs (reused_from says so) instead of
-- running.
alter table step_runs
    add column cutoff_run uuid,
    add column cutoff_execution uuid;

-- A reused step says why it was reused: with "changed" because nothing
-- about it changed, with a hand selection because it was not selected.
create or replace view execution_steps as
select s.id, s.execution_id, s.pipeline_id, s.step_name, s.step_type, s.position, s.status, s.skip_reason,
       s.arguments, s.retry_policies, s.cache_config, s.dependencies, s.dependents, s.branch_of, s.branch_if,
       s.attempt, s.lease_owner, s.callback_token, s.callback_deadline, s.failure_reason, s.error_type,
       s.properties, s.metadata, s.first_started_at, s.started_at, s.ended_at, s.cache_key, s.cache_components,
       s.cache_status, s.cache_miss_reason, s.cache_warnings, s.cache_hit, s.reused_from, s.artifacts_dir
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
       o.artifacts_dir
from executions e
cross join lateral unnest(e.reused_step_names, e.reused_step_runs, e.reused_step_positions) as r (step_name, run, position)
join step_runs o on o.id = r.run;
