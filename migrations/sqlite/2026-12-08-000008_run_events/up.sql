-- What happened to a run, in order: the journal `GET /api/script-runs/{id}/events` streams and
-- resumes from (`Last-Event-ID` is `seq`). Each row is written in the transaction of the change
-- it reports (server/src/db/writer.rs, WriteOp::WithEvents).
CREATE TABLE script_run_events (
    run_id TEXT NOT NULL,
    -- Per run, from 1, increasing: assigned at insert (the run's highest + 1).
    seq BIGINT NOT NULL,
    -- The event's name (runs::events::EventKind), e.g. `step.record`.
    kind TEXT NOT NULL,
    -- JSON: what the matching API read answered then (the run, or a journal entry).
    body TEXT NOT NULL,
    -- Unix ms.
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
-- One B-tree keyed by (run_id, seq) instead of a rowid table plus its key's index: a step's
-- event costs one page write less, and a run's events are read in key order.
) WITHOUT ROWID;
