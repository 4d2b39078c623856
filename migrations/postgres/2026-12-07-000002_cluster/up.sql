-- A cluster on one PostgreSQL database (see server/src/cluster/ and README "Running a cluster").

-- One row per node: a server that serves on this database. A node holds a lease it renews
-- (lease_until, on the database's clock); a node whose lease expired is declared `dead` by
-- another, which ends its running jobs and hands its runs to a live node. `epoch` is new at
-- every start (node_epochs): a write that carries a stale epoch is refused (fencing).
CREATE SEQUENCE node_epochs;
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    -- Where other nodes reach it: http://host:port.
    advertise TEXT NOT NULL,
    -- A random secret other nodes present on its internal routes (log pages, forwarded run
    -- requests); it changes at every start.
    token TEXT NOT NULL,
    -- 'up', 'draining' (SIGTERM: finishing its running jobs, claiming nothing), 'stopped'
    -- (clean exit), 'dead' (lease expired).
    state TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ,
    -- Why it ended (a dead node: who declared it and when its lease expired).
    reason TEXT,
    -- The machine and process that run it (pid and start time in clock ticks since boot): a
    -- node starting under an id that is up tells a crashed predecessor from a live namesake.
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    proc_start_ticks BIGINT NOT NULL DEFAULT 0
);

-- The node that runs the job (NULL: not claimed yet, or run by a server before the cluster).
ALTER TABLE jobs ADD COLUMN node TEXT;
-- Set by a cancel on any node; the owner stops the job (told by NOTIFY, or its next poll).
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
-- The node that holds the run (NULL: free for any live node to take and resume).
ALTER TABLE script_runs ADD COLUMN node TEXT;

-- The shared queue: queued async jobs nobody claimed, oldest first (claimed with
-- FOR UPDATE SKIP LOCKED).
CREATE INDEX jobs_queue ON jobs (seq) WHERE status = 'queued' AND mode = 'async' AND node IS NULL;
-- What a node runs (the reaper's sweep, GET /cluster, the cancel poll).
CREATE INDEX jobs_node_running ON jobs (node) WHERE status = 'running';
-- Runs free to be taken.
CREATE INDEX script_runs_free ON script_runs (seq) WHERE node IS NULL AND status IN ('running', 'awaiting', 'paused');

-- A queued async job tells every node at once (in its insert's transaction: no round trip of
-- its own); each node also polls the queue every second, so a lost notification only delays.
CREATE FUNCTION script_runner_job_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('script_runner_job_queued', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_queued AFTER INSERT ON jobs FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.mode = 'async' AND NEW.node IS NULL)
    EXECUTE FUNCTION script_runner_job_queued();

-- Fencing (see server/src/db/writer.rs, Fence): a node's writer connections carry its id and
-- epoch (session settings script_runner.node and script_runner.epoch). Every row they write
-- to a job, a run or the journal is refused when that node is no longer up or draining under
-- that epoch (it lost its lease: another node declared it dead and took over its work). The
-- node's advisory lock, shared, is held to the end of the transaction: the sweep that declares
-- a node dead takes it exclusively first. Connections without the settings (the cluster's own
-- guarded statements, migrate-db) are not checked here.
CREATE FUNCTION script_runner_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me TEXT := current_setting('script_runner.node', true);
    my_epoch TEXT := current_setting('script_runner.epoch', true);
BEGIN
    IF me IS NULL OR me = '' THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(hashtextextended(me, 7));
    IF NOT EXISTS (SELECT 1 FROM nodes WHERE id = me AND epoch = my_epoch::bigint AND state IN ('up', 'draining')) THEN
        RAISE EXCEPTION 'script-runner fence: node % (epoch %) is no longer up in the cluster: it lost its lease', me, my_epoch;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_fence BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION script_runner_fence();
CREATE TRIGGER script_runs_fence BEFORE INSERT OR UPDATE ON script_runs FOR EACH ROW EXECUTE FUNCTION script_runner_fence();
CREATE TRIGGER script_run_journal_fence BEFORE INSERT OR UPDATE ON script_run_journal FOR EACH ROW EXECUTE FUNCTION script_runner_fence();
