-- A workflow step's job: `<runId>:<label>`, given to its process as SCRIPT_STEP_KEY (stable
-- across replays and retries, so the script can make an external write exactly once). Kept
-- with the job so a job queued, claimed by another node, or restarted after a crash still
-- gets it. NULL for a job started by `POST /run`.
ALTER TABLE jobs ADD COLUMN step_key TEXT;
