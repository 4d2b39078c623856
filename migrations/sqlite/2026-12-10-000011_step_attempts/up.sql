-- A retried step's failed attempts (JSON array of {attempt, status, exitCode, error, stderrTail,
-- startedAt, endedAt, jobId?}, times in Unix ms), in the order they ran; `[]` for a step that was
-- never retried. The step's own result and error are its last attempt's.
ALTER TABLE script_run_journal ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
