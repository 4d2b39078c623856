-- The outbox of completion callbacks (issue 17): one row per callback asked for, written in the
-- transaction that stores its job or run (server/src/db/writer.rs, WriteOp::WithCallback), so a crash
-- never loses one. The delivery task (server/src/callbacks.rs) picks the `pending` rows whose
-- job or run has ended and whose `next_attempt_at` has come; a restart resumes them.
CREATE TABLE callbacks (
    id TEXT PRIMARY KEY NOT NULL,
    -- `job` or `run`, and its id.
    owner_kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    url TEXT NOT NULL,
    -- JSON array of event names (`completed`, `failed`).
    events TEXT NOT NULL,
    -- pending | delivered | failed | skipped (the final status is not one the caller asked for).
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    -- JSON array of the last attempts ({at, status?, error?, durationMs}), at most 20.
    attempt_log TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX callbacks_owner ON callbacks (owner_id);
CREATE INDEX callbacks_pending ON callbacks (next_attempt_at) WHERE state = 'pending';
-- Fenced like the other rows a node writes (000002_cluster).
CREATE TRIGGER callbacks_fence BEFORE INSERT OR UPDATE ON callbacks
    FOR EACH ROW EXECUTE FUNCTION script_runner_fence();
