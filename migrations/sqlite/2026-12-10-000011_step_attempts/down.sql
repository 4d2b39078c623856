ALTER TABLE script_run_journal DROP COLUMN attempts;
