-- Resume URLs that have been used (issue 17): one row per token, stored as its SHA-256 (hex),
-- never as the token itself. Written in the transaction that ends the step the token decided
-- (server/src/db/writer.rs, WriteOp::WithResumeToken), so a token is recorded used exactly when
-- its step was decided through it; the primary key keeps a token to one use.
CREATE TABLE resume_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    -- `resume` or `deny`.
    action TEXT NOT NULL,
    -- A random id of the request that used it: of two requests using one URL at once, the one
    -- whose id is here is the one that decided the step (their journal results may be equal).
    use_id TEXT NOT NULL,
    used_at BIGINT NOT NULL
);
CREATE INDEX resume_tokens_run ON resume_tokens (run_id);
