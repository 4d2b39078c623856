DROP INDEX jobs_idempotency_key;
ALTER TABLE jobs DROP COLUMN idempotency_key;
