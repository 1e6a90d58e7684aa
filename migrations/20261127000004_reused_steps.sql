-- A selective execution reuses most steps from its source execution. Copying
-- a thousand step rows costs tens of milliseconds (a heap row, eight index
-- entries and a foreign-key check each), so a reused step is not a row: it is
-- one element of three parallel arrays on the execution: its name, the id of
-- the step run that produced its outputs, and its index in the definition.
-- execution_steps shows both kinds as one relation.
alter table executions
    add column reused_step_names text[],
    add column reused_step_runs uuid[],
    add column reused_step_positions integer[];

-- Every step of every execution as the API reports it. A reused step shows
-- the outputs, type and dependencies of the run that produced them, and the
-- time the reusing execution started. Its id is that run's id, so ids are
-- unique only within one execution: writes go to step_runs, never here.
create view execution_steps as
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
                          'source_step_run_id', o.id),
       o.artifacts_dir
from executions e
cross join lateral unnest(e.reused_step_names, e.reused_step_runs, e.reused_step_positions) as r (step_name, run, position)
join step_runs o on o.id = r.run;
