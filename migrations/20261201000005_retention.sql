-- Retention (retention.executions_days) removes ended executions with their
-- step runs, attempts (logs) and events. A tombstone per removed execution
-- lets a later start that names it as its source say why it is gone; it is
-- itself removed after a while (engine::retention::TOMBSTONE_DAYS), so the
-- table stays small.
create table execution_tombstones (
    id uuid primary key,
    pipeline_id uuid not null references pipelines (id) on delete cascade,
    executions_days integer not null,
    removed_at timestamptz not null default now()
);
create index execution_tombstones_by_age on execution_tombstones (removed_at);

-- Retention picks the oldest ended executions first.
create index executions_ended on executions (ended_at)
    where status in ('Succeeded', 'Failed', 'Stopped');
-- An execution is kept while another execution reuses one of its step runs
-- (selective execution) ...
create index executions_reused_runs on executions using gin (reused_step_runs)
    where reused_step_runs is not null;
-- ... or while a cache hit of another execution refers to one of them.
create index step_runs_cache_hit_source on step_runs (((cache_hit ->> 'source_step_run_id')::uuid))
    where cache_hit is not null;
