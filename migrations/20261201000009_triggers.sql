-- Trigger-style dependencies (SPEC 8, 2.3): a DependsOn entry
-- {"Step": S, "Trigger": T} with T one of Failed, Stopped, Any. A step with
-- such an entry (a handler) stores them here as {S: T}; null for every
-- other step. A handler's remaining_deps never reaches 0 by its
-- dependencies' successes (it starts at cardinality(dependencies) + 1): it
-- is judged once all its dependencies have ended, by a statement that
-- reads their statuses, and only an execution that has handlers runs it.
alter table step_runs add column triggers jsonb;
alter table executions add column has_triggers boolean not null default false;
