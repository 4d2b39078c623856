-- Why a stream's output could not be stored (permission, disk full, any I/O error), e.g.
-- "cannot write /srv/logs/job_1_1.stdout.log: No space left on device (os error 28)"; NULL when
-- all of it was stored or dropped at the cap (which *_truncated says).
ALTER TABLE jobs ADD COLUMN stdout_error TEXT;
ALTER TABLE jobs ADD COLUMN stderr_error TEXT;
