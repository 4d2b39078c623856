ALTER TABLE jobs DROP COLUMN stderr_error;
ALTER TABLE jobs DROP COLUMN stdout_error;
