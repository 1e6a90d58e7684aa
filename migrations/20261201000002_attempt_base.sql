-- Attempt numbers are never reused, so a retried step's budget counts from
-- here: the attempts before the last POST /retry, and those released at
-- shutdown, do not count against its RetryPolicies.
alter table step_runs add column attempt_base integer not null default 0;
