-- Run-level retry (POST /api/script-runs {"retry": {"attempts", "delayMs"}}): the option as
-- launched (JSON, NULL without one), the failed executions it retried so far (JSON array, one
-- object per failed execution with the journal entries moved out of the journal), and when the
-- next execution starts (Unix ms; NULL when none is waiting), so a restart waits only what is
-- left of the delay.
ALTER TABLE script_runs ADD COLUMN retry TEXT;
ALTER TABLE script_runs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE script_runs ADD COLUMN next_attempt_at BIGINT;
