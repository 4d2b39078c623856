ALTER TABLE callbacks DROP COLUMN status_seq;
