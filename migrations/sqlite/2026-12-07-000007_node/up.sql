-- The node that runs a job or holds a run (a cluster on PostgreSQL). A SQLite database has one
-- server and leaves it NULL; the column is here so both backends share one schema.
ALTER TABLE jobs ADD COLUMN node TEXT;
ALTER TABLE script_runs ADD COLUMN node TEXT;
