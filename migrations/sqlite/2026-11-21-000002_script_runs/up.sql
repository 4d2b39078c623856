-- Durable workflow runs and their step journal. Portable SQL: TEXT, BIGINT, INTEGER and
-- BOOLEAN only, times in Unix milliseconds, JSON stored as TEXT (PostgreSQL can follow).
CREATE TABLE script_runs (
    -- Insertion order: "newest first" listings use it.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    script_name TEXT NOT NULL,
    -- The configured workflow id (scripts.json, "kind": "workflow"); NULL for inline source.
    workflow_id TEXT,
    -- The interpreter name of an inline run (config.json workflows.interpreters).
    interpreter TEXT,
    -- The flow name of a durable flow run (a folder of workflows.flowsDir).
    flow TEXT,
    status TEXT NOT NULL,
    -- The launch arguments, any JSON value.
    args TEXT NOT NULL,
    -- The exact source every execution of the run executes, and its sha256 (hex).
    source TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    -- JSON: the parsed stdout, or the trimmed text as a JSON string.
    output TEXT,
    error TEXT,
    -- JSON array of strings.
    warnings TEXT NOT NULL DEFAULT '[]',
    idempotency_key TEXT UNIQUE,
    -- sha256 of what the idempotency key was first used for (workflow or source, and args).
    request_sha256 TEXT NOT NULL,
    -- sha256 of the current execution's run token (the token itself is never stored).
    token_sha256 TEXT NOT NULL,
    -- The run this one was forked from.
    forked_from TEXT,
    pid INTEGER,
    attempt INTEGER NOT NULL DEFAULT 0,
    progress_current BIGINT,
    progress_total BIGINT,
    progress_message TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    last_heartbeat_at BIGINT
);
CREATE INDEX script_runs_status_seq ON script_runs (status, seq);
CREATE INDEX script_runs_name_seq ON script_runs (script_name, seq);

-- One row per (run, label): the unique key is what makes journal writes race-safe.
CREATE TABLE script_run_journal (
    run_id TEXT NOT NULL REFERENCES script_runs (id),
    step_key TEXT NOT NULL,
    -- Journal order within the run.
    seq BIGINT NOT NULL,
    step_type TEXT NOT NULL,
    -- JSON: what the step was asked to do (compared on replay to detect divergence).
    config TEXT NOT NULL,
    -- started | completed | failed
    status TEXT NOT NULL,
    -- JSON
    result TEXT,
    error TEXT,
    -- The server-side job a script step started.
    job_id TEXT,
    started_at BIGINT NOT NULL,
    completed_at BIGINT,
    duration_ms BIGINT,
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX script_run_journal_order ON script_run_journal (run_id, seq);
