DROP TABLE imports;
DROP TABLE jobs;
