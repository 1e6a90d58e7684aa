-- Retention keeps an execution while another one uses its outputs. A step
-- reused by early cut-off names the run it took them from in reused_from;
-- this index lets retention find such a reference for the few candidate
-- runs it checks, as step_runs_cache_hit_source does for cache hits.
create index step_runs_reused_from_source on step_runs (((reused_from ->> 'source_step_run_id')::uuid))
    where reused_from is not null;
