-- POST /run's idempotencyKey: the key a job was started under, kept with the job history, so
-- the same key again answers that job instead of starting another (an OOMOL block re-spawned
-- for one engine job, a client retrying after a lost answer). A partial index: the many jobs
-- without a key cost it nothing.
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
