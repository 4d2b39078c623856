CREATE TABLE jobs_rebuilt (
    -- Insertion order: "newest first" listings and the job-id counter use it.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    script_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    -- The request's arguments, as a JSON array of strings (kept so a queued job can run after a restart).
    args TEXT NOT NULL,
    code INTEGER,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    duration_ms BIGINT,
    stdout_ref TEXT NOT NULL,
    stderr_ref TEXT NOT NULL,
    stdout_size BIGINT NOT NULL DEFAULT 0,
    stderr_size BIGINT NOT NULL DEFAULT 0,
    stdout_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    stderr_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    stdout_preview TEXT NOT NULL DEFAULT '',
    stderr_preview TEXT NOT NULL DEFAULT '',
    -- Line counts of the stored streams; NULL when unknown (imported jobs).
    stdout_lines BIGINT,
    stderr_lines BIGINT,
    -- The process group leader and its start time (clock ticks since boot, /proc/<pid>/stat
    -- field 22): after a crash the group is killed only if the leader is that same process.
    pid INTEGER,
    proc_start_ticks BIGINT
);
INSERT INTO jobs_rebuilt (seq, id, script_id, mode, status, args, code, error, created_at, started_at, ended_at, duration_ms, stdout_ref, stderr_ref, stdout_size, stderr_size, stdout_truncated, stderr_truncated, stdout_preview, stderr_preview, stdout_lines, stderr_lines, pid, proc_start_ticks)
    SELECT seq, id, script_id, mode, status, args, code, error, created_at, started_at, ended_at, duration_ms, stdout_ref, stderr_ref, stdout_size, stderr_size, stdout_truncated, stderr_truncated, stdout_preview, stderr_preview, stdout_lines, stderr_lines, pid, proc_start_ticks FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;
CREATE INDEX jobs_status_seq ON jobs (status, seq);
CREATE INDEX jobs_script_seq ON jobs (script_id, seq);
