-- `status` callbacks (events: ["status"]): how far the status changes of the job or run have
-- been delivered. For a run, the number of the last of its events (script_run_events.seq)
-- delivered or passed; for a job, 1 once its start was delivered. 0: none yet.
ALTER TABLE callbacks ADD COLUMN status_seq BIGINT NOT NULL DEFAULT 0;
