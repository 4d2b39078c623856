DROP TABLE resume_tokens;
