ALTER TABLE script_runs DROP COLUMN next_attempt_at;
ALTER TABLE script_runs DROP COLUMN attempts;
ALTER TABLE script_runs DROP COLUMN retry;
