-- Executions, their step runs, every attempt, and the event log that feeds
-- server-sent events. Scheduling state lives on step_runs so each transition
-- is a few set-based statements in one transaction.
create table executions (
    id uuid primary key,
    pipeline_id uuid not null references pipelines (id) on delete cascade,
    pipeline_version integer not null,
    status text not null,
    failure_reason text,
    -- Set when a Fail step ended the run: such a run cannot be retried.
    failed_by_fail_step boolean not null default false,
    parameters jsonb not null,
    definition jsonb not null,
    selective_execution jsonb,
    cache_mode text not null default 'use',
    max_parallel_steps integer,
    display_name text,
    description text,
    client_request_token text,
    request_hash text,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    ended_at timestamptz,
    unique (pipeline_id, client_request_token)
);
create index executions_by_pipeline on executions (pipeline_id, created_at desc, id desc);
create index executions_active on executions (status) where status in ('Executing', 'Stopping');

create table step_runs (
    id uuid primary key,
    execution_id uuid not null references executions (id) on delete cascade,
    pipeline_id uuid not null,
    step_name text not null,
    step_type text not null,
    position integer not null,
    status text not null,
    skip_reason text,
    -- The step as defined: arguments (with expressions), retry policies, cache config.
    arguments jsonb not null,
    retry_policies jsonb not null default '[]',
    cache_config jsonb,
    dependencies text[] not null,
    dependents text[] not null,
    -- Dependencies that have not succeeded yet; 0 means ready.
    remaining_deps integer not null,
    branch_of text,
    branch_if boolean,
    attempt integer not null default 0,
    available_at timestamptz,
    lease_owner uuid,
    lease_expires_at timestamptz,
    callback_token uuid unique,
    callback_deadline timestamptz,
    failure_reason text,
    error_type text,
    properties jsonb,
    metadata jsonb not null default '{}',
    first_started_at timestamptz,
    started_at timestamptz,
    ended_at timestamptz,
    cache_key text,
    cache_components jsonb,
    cache_status text,
    cache_miss_reason text,
    cache_warnings jsonb,
    cache_hit jsonb,
    reused_from jsonb,
    artifacts_dir text,
    unique (execution_id, step_name)
);
-- The claim query reads only queued rows.
create index step_runs_claimable on step_runs (available_at) where status = 'Starting';
-- The rescuer reads only leased rows.
create index step_runs_leased on step_runs (lease_expires_at) where lease_expires_at is not null;
create index step_runs_callbacks on step_runs (callback_deadline) where callback_deadline is not null;
-- Cache lookups: newest successful run of a step with a key in a pipeline.
create index step_runs_cache on step_runs (pipeline_id, step_name, cache_key, ended_at desc)
    where status = 'Succeeded' and cache_key is not null;

create table step_attempts (
    step_run_id uuid not null references step_runs (id) on delete cascade,
    attempt integer not null,
    status text not null,
    error_type text,
    failure_reason text,
    worker_id uuid,
    exit_code integer,
    log text,
    started_at timestamptz not null default now(),
    ended_at timestamptz,
    primary key (step_run_id, attempt)
);

create table execution_events (
    id bigserial primary key,
    execution_id uuid not null references executions (id) on delete cascade,
    step_name text,
    status text not null,
    detail jsonb,
    created_at timestamptz not null default now()
);
create index execution_events_by_execution on execution_events (execution_id, id);

-- Scheduling reads: steps that are ready but not yet queued, and whether an
-- execution still has unfinished steps.
create index step_runs_ready on step_runs (execution_id, position) where status = 'Pending' and remaining_deps = 0;
create index step_runs_unfinished on step_runs (execution_id)
    where status in ('Pending', 'Starting', 'Executing', 'Stopping');
