-- The status index leaves out succeeded jobs, most of a history: a job that succeeds (a short
-- sync job is written once, finished) then writes three b-tree pages instead of four, which
-- measured 10-20% of the server's CPU per job. Listing by any other status still reads this
-- index in order (the queries repeat its predicate, `status <> 'succeeded'`); succeeded jobs are
-- listed newest first by scanning the table, where they are most rows, and counted as all jobs
-- less the others (see db::Store::list_jobs).
DROP INDEX jobs_status_seq;
CREATE INDEX jobs_status_seq ON jobs (status, seq) WHERE status <> 'succeeded';
