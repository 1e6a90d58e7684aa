-- Fair claims (issue 20): the claim serves first the executions whose last
-- claimed step is oldest (round robin), reading each one's latest
-- started_at through this index instead of scanning its steps.
create index step_runs_last_started on step_runs (execution_id, started_at);
