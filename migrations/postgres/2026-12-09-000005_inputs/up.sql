-- What an `awaiting` run waits for (JSON: the step's label and kind, and its message, prompt
-- and schema, or event name), shown as the run's `waitingFor`; NULL when it waits for nothing.
ALTER TABLE script_runs ADD COLUMN waiting_for TEXT;
