DROP INDEX script_runs_free;
DROP INDEX jobs_node_running;
DROP INDEX jobs_queue;
ALTER TABLE script_runs DROP COLUMN node;
ALTER TABLE jobs DROP COLUMN cancel_requested;
ALTER TABLE jobs DROP COLUMN node;
DROP TABLE nodes;
DROP SEQUENCE node_epochs;
