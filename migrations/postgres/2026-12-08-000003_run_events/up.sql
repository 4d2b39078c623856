-- What happened to a run, in order: the journal `GET /api/script-runs/{id}/events` streams and
-- resumes from (`Last-Event-ID` is `seq`). Each row is written in the transaction of the change
-- it reports (server/src/db/writer.rs, WriteOp::WithEvents). Same columns as SQLite's
-- (migrations/sqlite/...000008_run_events).
CREATE TABLE script_run_events (
    run_id TEXT NOT NULL,
    -- Per run, from 1, increasing: assigned at insert (the run's highest + 1, under a
    -- transaction-scoped advisory lock on the run, so two writers never take one number).
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    -- JSON as TEXT, answered byte for byte (see 000001_schema).
    body TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
-- Fenced like the other rows a node writes (000002_cluster): a node that lost its lease
-- announces nothing.
CREATE TRIGGER script_run_events_fence BEFORE INSERT OR UPDATE ON script_run_events
    FOR EACH ROW EXECUTE FUNCTION script_runner_fence();
