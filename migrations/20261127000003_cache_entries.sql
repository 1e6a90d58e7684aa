-- A step run is a cache entry when it ran (not a hit, not a reuse) with
-- caching on and succeeded. Purging clears the flag and keeps the history.
alter table step_runs add column cache_entry boolean not null default false;
drop index step_runs_cache;
create index step_runs_cache on step_runs (pipeline_id, step_name, cache_key, ended_at desc) where cache_entry;
-- The nearest earlier entry of a step, to explain a miss.
create index step_runs_cache_by_step on step_runs (pipeline_id, step_name, ended_at desc) where cache_entry;
