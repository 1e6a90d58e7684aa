-- Pipelines and their immutable versions. A pipeline row holds what is
-- current; every create or update appends a row to pipeline_versions.
create table pipelines (
    id uuid primary key,
    name text not null unique,
    description text,
    display_name text,
    max_parallel_steps integer,
    latest_version integer not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table pipeline_versions (
    pipeline_id uuid not null references pipelines (id) on delete cascade,
    version integer not null,
    definition jsonb not null,
    description text,
    display_name text,
    max_parallel_steps integer,
    created_at timestamptz not null default now(),
    primary key (pipeline_id, version)
);
