DROP TABLE script_run_journal;
DROP TABLE script_runs;
