DROP INDEX jobs_status_seq;
CREATE INDEX jobs_status_seq ON jobs (status, seq);
