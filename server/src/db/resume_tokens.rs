//! The resume URLs used (`resume_tokens`): its row, made from [`crate::runs::resume::Used`],
//! and its read. Its write is [`WriteOp::WithResumeToken`], in the transaction that ends the
//! step the URL decided.

use diesel::prelude::*;

use super::models::ResumeTokenRow;
use super::schema::resume_tokens;
use super::{Store, StoreError, WriteOp};
use crate::runs::resume::Used;

impl From<&Used> for ResumeTokenRow {
    fn from(u: &Used) -> ResumeTokenRow {
        ResumeTokenRow {
            token_hash: u.token_sha256.clone(),
            run_id: u.run_id.clone(),
            step_key: u.label.clone(),
            action: u.action.as_str().to_string(),
            use_id: u.use_id.clone(),
            used_at: u.used_at,
        }
    }
}

impl WriteOp {
    /// `op` (the end of a started step) and the record of the resume URL that ended it, in one
    /// transaction; the record is stored only if `op` changed the step (a step another
    /// decision ended first records no use of this URL).
    pub fn with_resume_token(op: WriteOp, used: &Used) -> WriteOp {
        WriteOp::WithResumeToken { op: Box::new(op), token: Box::new(ResumeTokenRow::from(used)) }
    }
}

impl Store {
    /// The use of the resume URL whose token has this SHA-256 (hex), if it was used: the id of
    /// the request that used it and when (Unix ms).
    pub fn resume_token_use(&self, token_sha256: &str) -> Result<Option<(String, i64)>, StoreError> {
        self.read(|conn| {
            Ok(resume_tokens::table
                .filter(resume_tokens::token_hash.eq(token_sha256))
                .select((resume_tokens::use_id, resume_tokens::used_at))
                .first::<(String, i64)>(conn)
                .optional()?)
        })
    }
}
