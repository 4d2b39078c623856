ALTER TABLE script_runs DROP COLUMN waiting_for;
