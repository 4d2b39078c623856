DROP TABLE script_run_journal;
DROP TABLE script_runs;
DROP TABLE imports;
DROP TABLE jobs;
DROP TABLE deployment;
