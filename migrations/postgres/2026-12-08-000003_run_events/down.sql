DROP TRIGGER script_run_events_fence ON script_run_events;
DROP TABLE script_run_events;
