//! Resume URLs: a pair of links an `awaiting` run shows for the approval, input or event step it
//! waits for (`waitingFor.resumeUrl` / `denyUrl`), which an outside system (a chat message, an
//! email, a third party's webhook) calls without the server's token.
//!
//! A URL's token is its own credential: `base64url(claims).base64url(HMAC-SHA256(secret,
//! claims))`, where the claims name the run, the step's label, the action (`resume` or
//! `deny`), the step's start and when the URL expires. It is computed, not stored: every read
//! of the run shows the same URLs, and the database never holds a token that works. A token is
//! checked by its signature (a forged or altered one is [`RunError::ResumeUrlNotFound`], which
//! does not say what was wrong), then its expiry ([`RunError::ResumeUrlExpired`]), then the
//! step it names: it must still be the same step (same start) and still undecided, else
//! [`RunError::AlreadyDecided`]. A URL that decides its step is recorded used by the SHA-256 of
//! its token, in the transaction that ends the step ([`crate::db::WriteOp::with_resume_token`]):
//! since the step can end once, the URL works once, and so does its pair (the step is decided).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::RunError;
use super::journal;
use super::launch::sha256_hex;
use super::model::{JournalEntry, Run, RunStatus, StepStatus, StepType};
use super::Engine;
use crate::config::ResumeConfig;
use crate::time::{iso, now_ms};

/// Longest token accepted: a run id and a label of [`crate::names::MAX_NAME_CHARS`] characters
/// (4 bytes each at most), in base64, fit well within it; anything longer is not one of ours.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// What a resume URL does to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Approve an approval, submit an input's value, deliver an event.
    Resume,
    /// Deny an approval; fail an input or event step.
    Deny,
}

impl Action {
    /// The spelling in the claims, the API and the `resume_tokens` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Resume => "resume",
            Action::Deny => "deny",
        }
    }
}

/// What a token says, trusted once its signature is checked. (Short keys: the token is in a URL.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The run.
    #[serde(rename = "r")]
    pub run_id: String,
    /// The step's label.
    #[serde(rename = "l")]
    pub label: String,
    /// What it does.
    #[serde(rename = "a")]
    pub action: Action,
    /// The step's start (Unix ms): a step begun again (another journal) gets other URLs.
    #[serde(rename = "s")]
    pub started_at: i64,
    /// When the URL stops working (Unix ms).
    #[serde(rename = "e")]
    pub expires_at: i64,
}

/// A resume URL used: the SHA-256 of its token (never the token), stored with the step's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// The run.
    pub run_id: String,
    /// The step's label.
    pub label: String,
    /// What it did.
    pub action: Action,
    /// A random id of this request: of two requests using the URL at once, whose journal
    /// results may be equal, the one whose id was stored decided the step.
    pub use_id: String,
    /// Unix ms.
    pub used_at: i64,
}

impl Used {
    /// Whether this use is the one stored for its token (checked after the step's end was
    /// written: only the write that ended the step stored its use).
    pub async fn is_stored(&self, engine: &Engine) -> Result<bool, RunError> {
        let (store, hash) = (engine.store.clone(), self.token_sha256.clone());
        let stored = crate::sync::blocking(move || store.resume_token_use(&hash)).await??;
        Ok(stored.is_some_and(|(use_id, _)| use_id == self.use_id))
    }
}

/// The URLs of a waiting step, as its run shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// Approves, submits or delivers.
    pub resume_url: String,
    /// Denies, or fails the step.
    pub deny_url: String,
    /// When both stop working (Unix ms).
    pub expires_at: i64,
}

/// The token of `claims` under `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mac = crate::callbacks::hmac_sha256(secret, &payload);
    format!("{}.{}", base64url(&payload), base64url(&mac))
}

/// The claims of a token signed with `secret`; `None` for anything else (malformed, too long,
/// altered, signed with another key), without saying which.
pub fn verify(secret: &[u8], token: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let (payload, mac) = token.split_once('.')?;
    let (payload, mac) = (unbase64url(payload)?, unbase64url(mac)?);
    let expected = crate::callbacks::hmac_sha256(secret, &payload);
    if !constant_time_eq::constant_time_eq(&expected, &mac) {
        return None;
    }
    serde_json::from_slice(&payload).ok()
}

/// The URLs of the step `label` of run `run_id` begun at `started_at` (Unix ms), under
/// `base` (no trailing `/`); `None` when no `resume.secret` is configured.
pub fn links(config: &ResumeConfig, base: &str, run_id: &str, label: &str, started_at: i64) -> Option<Links> {
    let secret = config.secret.as_ref()?.as_bytes();
    let ttl_ms = i64::try_from(config.ttl_sec.saturating_mul(1000)).unwrap_or(i64::MAX);
    let expires_at = started_at.saturating_add(ttl_ms);
    let url = |action| {
        let claims = Claims { run_id: run_id.to_string(), label: label.to_string(), action, started_at, expires_at };
        format!("{base}/api/resume/{}", sign(secret, &claims))
    };
    Some(Links { resume_url: url(Action::Resume), deny_url: url(Action::Deny), expires_at })
}

/// A resume URL's step as it is now: what its `GET` shows.
#[derive(Debug, Clone)]
pub struct Described {
    /// What the token says.
    pub claims: Claims,
    /// The step (its kind, what it asks, whether it has ended).
    pub entry: JournalEntry,
    /// The run's status.
    pub run_status: RunStatus,
    /// When this URL was used, if it was.
    pub used_at: Option<i64>,
}

/// The claims of a token that may be used now: signed with this server's secret and not
/// expired. Without a configured secret every token is [`RunError::ResumeUrlNotFound`].
pub fn check(engine: &Engine, token: &str) -> Result<Claims, RunError> {
    let secret = engine.config.resume.secret.as_ref().ok_or(RunError::ResumeUrlNotFound)?;
    let claims = verify(secret.as_bytes(), token).ok_or(RunError::ResumeUrlNotFound)?;
    if now_ms() >= claims.expires_at {
        return Err(RunError::ResumeUrlExpired(iso(claims.expires_at)));
    }
    Ok(claims)
}

/// The step a checked token names: an approval, input or event step of its run begun when
/// the token says (else [`RunError::ResumeUrlNotFound`]: the URL is of no step there is).
async fn step_of(engine: &Engine, claims: &Claims) -> Result<JournalEntry, RunError> {
    let entry = engine.step(&claims.run_id, &claims.label).await?;
    entry
        .filter(|e| matches!(e.step_type, StepType::Approval | StepType::Input | StepType::Event))
        .filter(|e| e.started_at == claims.started_at)
        .ok_or(RunError::ResumeUrlNotFound)
}

/// What a resume URL would do, changing nothing (a link preview fetches it).
pub async fn describe(engine: &Engine, token: &str) -> Result<Described, RunError> {
    let claims = check(engine, token)?;
    let run = match engine.get(&claims.run_id).await {
        Ok(run) => run,
        Err(RunError::RunNotFound(_)) => return Err(RunError::ResumeUrlNotFound),
        Err(e) => return Err(e),
    };
    let entry = step_of(engine, &claims).await?;
    let used_at = used_at(engine, token).await?;
    Ok(Described { claims, entry, run_status: run.status, used_at })
}

/// When the URL of `token` was used, if it was.
async fn used_at(engine: &Engine, token: &str) -> Result<Option<i64>, RunError> {
    let (store, hash) = (engine.store.clone(), sha256_hex(token.as_bytes()));
    let stored = crate::sync::blocking(move || store.resume_token_use(&hash)).await??;
    Ok(stored.map(|(_, at)| at))
}

/// Does what a resume URL says to its step, on the node that holds the run (else
/// [`RunError::OnOtherNode`], which the caller forwards): `body` is what the caller posted
/// (`Null` for no body). Approval: `{by?, comment?}`, approved (`resume`) or denied (`deny`).
/// Input: `resume` takes `{value, by?}`, checked against the step's schema as the input route
/// does ([`RunError::InputInvalid`], nothing journaled, the URL still usable). Event: `resume`
/// delivers `body` as the payload. `deny` of an input or event fails the step (journaled, so
/// every replay fails the same way). A step already ended, or a URL already used, is
/// [`RunError::AlreadyDecided`].
pub async fn act(engine: &Arc<Engine>, token: &str, body: Value) -> Result<(), RunError> {
    let claims = check(engine, token)?;
    // Decided first: a URL used, or whose step ended, is that whatever the run did since.
    let entry = step_of(engine, &claims).await?;
    if entry.status != StepStatus::Started || used_at(engine, token).await?.is_some() {
        return Err(RunError::AlreadyDecided(claims.label));
    }
    let live = match engine.require_live(&claims.run_id, "resumed").await {
        Ok(live) => live,
        // Another use decided the step since it was read above, and the run went on to its
        // end: that use won, as it would have had the run still been going.
        Err(RunError::InvalidState(message)) => {
            if step_of(engine, &claims).await?.status != StepStatus::Started {
                return Err(RunError::AlreadyDecided(claims.label));
            }
            return Err(RunError::InvalidState(message));
        }
        Err(e) => return Err(e),
    };
    let now = now_ms();
    let text = |key: &str| -> Result<Option<String>, RunError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(RunError::InvalidRequest(format!("{key} must be a string"))),
        }
    };
    let plain = || -> Result<(), RunError> {
        match &body {
            Value::Null | Value::Object(_) => Ok(()),
            _ => Err(RunError::InvalidRequest("the body must be a JSON object {by?, comment?}, or empty".into())),
        }
    };
    let (status, result, error) = match (entry.step_type, claims.action) {
        (StepType::Approval, action) => {
            plain()?;
            let approved = action == Action::Resume;
            let result = json!({
                "approved": approved, "by": text("by")?, "comment": text("comment")?,
                "decidedAt": iso(now), "via": "resumeUrl",
            });
            (StepStatus::Completed, result, None)
        }
        (StepType::Input, Action::Resume) => {
            let Some(value) = body.get("value") else {
                return Err(RunError::InvalidRequest("value is required: {\"value\": ..., \"by\"?: ...}".into()));
            };
            journal::rules::check_input(&claims.label, &entry.config, value)?;
            let result = json!({ "value": value, "by": text("by")?, "submittedAt": iso(now), "via": "resumeUrl" });
            (StepStatus::Completed, result, None)
        }
        (StepType::Event, Action::Resume) => {
            (StepStatus::Completed, json!({ "payload": body, "receivedAt": iso(now), "via": "resumeUrl" }), None)
        }
        (_, Action::Deny) => {
            plain()?;
            let mut result = entry.result.clone().unwrap_or_else(|| json!({}));
            if let Value::Object(map) = &mut result {
                map.insert("deniedAt".into(), json!(iso(now)));
                map.insert("by".into(), json!(text("by")?));
                map.insert("comment".into(), json!(text("comment")?));
                map.insert("via".into(), json!("resumeUrl"));
            }
            (StepStatus::Failed, result, Some("denied through its resume URL".to_string()))
        }
        _ => return Err(RunError::ResumeUrlNotFound),
    };
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(RunError::Randomness)?;
    let used = Used {
        token_sha256: sha256_hex(token.as_bytes()),
        run_id: claims.run_id.clone(),
        label: claims.label.clone(),
        action: claims.action,
        use_id: id.iter().map(|b| format!("{b:02x}")).collect(),
        used_at: now,
    };
    journal::decide(engine, &live, entry, status, result, error, Some(&used)).await?;
    // Who decided, for whoever reads the log later: the URL, never its token.
    log::info!("run {}: step {:?} decided through its {} URL", claims.run_id, claims.label, claims.action.as_str());
    Ok(())
}

/// The links of the step a run waits for, when resume URLs are configured: from the step's
/// label and start, which the run's stored `waitingFor` keeps (`startedAtMs`). A run that
/// waits for nothing, or waited before resume URLs existed, has none.
pub fn links_of(engine: &Engine, run: &Run) -> Option<Links> {
    if run.status != RunStatus::Awaiting {
        return None;
    }
    let waiting = run.waiting_for.as_ref()?;
    let label = waiting.get("label")?.as_str()?;
    let started_at = waiting.get("startedAtMs")?.as_i64()?;
    let config = &engine.config.resume;
    let base = match &config.base_url {
        Some(base) => base.as_str(),
        None => engine.url.get()?.as_str(),
    };
    links(config, base, &run.id, label, started_at)
}

/// Base64url without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The bytes of base64url text without padding; `None` if it is not that (a stray character,
/// an impossible length, or bits left over that a canonical encoding has as zero: one token
/// has one spelling).
fn unbase64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            run_id: "run_1_2".into(),
            label: "ship it".into(),
            action: Action::Resume,
            started_at: 1_700_000_000_000,
            expires_at: 1_700_000_060_000,
        }
    }

    #[test]
    fn base64url_round_trips_every_length_and_refuses_non_canonical_text() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url(&bytes);
            assert!(!text.contains(['=', '+', '/']), "{text}");
            assert_eq!(unbase64url(&text), Some(bytes), "{len}");
        }
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(unbase64url("Zm9"), None, "left-over bits set");
        assert_eq!(unbase64url("Zm9vY"), None, "impossible length");
        assert_eq!(unbase64url("Zm9v!"), None);
    }

    #[test]
    fn a_token_verifies_under_its_secret_only_and_not_once_altered() {
        let token = sign(b"secret", &claims());
        assert_eq!(verify(b"secret", &token), Some(claims()));
        assert_eq!(verify(b"other", &token), None);
        let (payload, mac) = token.split_once('.').expect("two parts");
        let mut forged = claims();
        forged.action = Action::Deny;
        let forged_payload = base64url(&serde_json::to_vec(&forged).expect("json"));
        assert_eq!(verify(b"secret", &format!("{forged_payload}.{mac}")), None);
        assert_eq!(verify(b"secret", payload), None);
        assert_eq!(verify(b"secret", &format!("{token}A")), None);
        assert_eq!(verify(b"secret", &"A".repeat(MAX_TOKEN_BYTES + 1)), None);
    }

    #[test]
    fn the_longest_claims_fit_in_a_token() {
        // Labels are at most MAX_NAME_CHARS characters without control characters: the widest
        // are of 4 bytes, or JSON-escaped (`"`, `\`).
        for c in ['\u{10FFFF}', '"', '\\'] {
            let label: String = std::iter::repeat(c).take(crate::names::MAX_NAME_CHARS).collect();
            let claims = Claims {
                run_id: format!("run_{}_{}", i64::MAX, u64::MAX),
                label,
                action: Action::Resume,
                started_at: i64::MAX,
                expires_at: i64::MAX,
            };
            let token = sign(b"secret", &claims);
            assert!(token.len() <= MAX_TOKEN_BYTES, "{} bytes", token.len());
            assert_eq!(verify(b"secret", &token), Some(claims));
        }
    }

    #[test]
    fn links_are_the_same_on_every_read_and_differ_per_action_and_step_start() {
        let config = ResumeConfig { secret: Some("s".into()), ttl_sec: 60, base_url: None };
        let a = links(&config, "http://h:1", "run_1_2", "ok", 5).expect("links");
        assert_eq!(Some(a.clone()), links(&config, "http://h:1", "run_1_2", "ok", 5));
        assert_ne!(a.resume_url, a.deny_url);
        assert_eq!(a.expires_at, 60_005);
        assert!(a.resume_url.starts_with("http://h:1/api/resume/"), "{}", a.resume_url);
        let again = links(&config, "http://h:1", "run_1_2", "ok", 6).expect("links");
        assert_ne!(again.resume_url, a.resume_url);
        let no_secret = ResumeConfig { secret: None, ..config };
        assert_eq!(links(&no_secret, "http://h:1", "run_1_2", "ok", 5), None);
    }
}
