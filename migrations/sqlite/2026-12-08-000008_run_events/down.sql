DROP TABLE script_run_events;
