-- A step's log is whatever bytes its process wrote: NUL bytes and invalid
-- UTF-8 included. `text` refuses 0x00, which failed the step's report.
alter table step_attempts alter column log type bytea using convert_to(log, 'UTF8');
