//! `GET` and `POST /api/resume/{token}`: the resume URLs of waiting steps, called by outside
//! systems without the server's token (the token in the path is the credential; see
//! [`crate::runs::resume`]). Neither the token nor the path is logged or put in an error
//! message.

use actix_web::{web, HttpRequest, HttpResponse};
use script_runner_wire::runs::ResumeUrlView;

use super::openapi::ErrorBody;
use super::{ApiError, AppState};
use crate::runs::model::{StepStatus, StepType};
use crate::runs::resume::{Action, Described};
use crate::time::iso;

/// `GET /api/resume/{token}`: what the URL would do, and whether its step is decided; changes
/// nothing (a chat client's link preview fetches it).
#[utoipa::path(
    get,
    path = "/api/resume/{token}",
    operation_id = "describeResumeUrl",
    tag = "runs",
    params(("token" = String, Path, description = "The URL's token: its own credential (no server token needed).")),
    responses(
        (status = 200, description = "The step the URL decides and what a `POST` to it does.", body = ResumeUrlView),
        (status = 404, description = "`RESUME_URL_NOT_FOUND`: not a URL this server issued (or no \
            `resume.secret` is configured); it does not say what is wrong.", body = ErrorBody),
        (status = 410, description = "`RESUME_URL_EXPIRED`: past its `expiresAt`.", body = ErrorBody),
        (status = 500, description = "`INTERNAL_ERROR`: an unexpected failure (logged).", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE` (with `Retry-After`), `SHUTTING_DOWN`: try again later.", body = ErrorBody),
    ),
)]
pub async fn describe(state: web::Data<AppState>, token: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let described = state.runs.describe_resume_url(&token).await?;
    Ok(HttpResponse::Ok().json(view(described)))
}

/// `POST /api/resume/{token}`: does what the URL says, once. Approval: approve (`resume`) or
/// deny (`deny`), body optional `{by?, comment?}`. Input: `resume` submits `{value, by?}`
/// (checked against the step's schema: `400 INPUT_INVALID`, and the URL still works). Event:
/// `resume` delivers the body (any JSON, empty: `null`) as the payload. `deny` of an input or
/// event step fails it. A second use, or a step already decided, is `409 ALREADY_DECIDED`.
#[utoipa::path(
    post,
    path = "/api/resume/{token}",
    operation_id = "useResumeUrl",
    tag = "runs",
    params(("token" = String, Path, description = "The URL's token: its own credential (no server token needed).")),
    request_body(content = serde_json::Value, description = "Optional. An approval or a `deny`: `{by?, comment?}`; \
        an input's `resume`: `{value, by?}`; an event's `resume`: the payload (any JSON)."),
    responses(
        (status = 200, description = "The step, decided (`decided: true`, `usedAt`).", body = ResumeUrlView),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `INPUT_INVALID` (the message names the \
            JSON pointer of the first mismatch; nothing is journaled and the URL still works).", body = ErrorBody),
        (status = 404, description = "`RESUME_URL_NOT_FOUND`: not a URL this server issued (or no \
            `resume.secret` is configured); it does not say what is wrong.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED` (this URL or its pair was used, or the step was \
            decided otherwise), `INVALID_STATE` (the run has ended).", body = ErrorBody),
        (status = 410, description = "`RESUME_URL_EXPIRED`: past its `expiresAt`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 500, description = "`INTERNAL_ERROR`: an unexpected failure (logged).", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE` (with `Retry-After`), `SHUTTING_DOWN`, `NODE_FENCED`, \
            `RUN_OWNER_DOWN`: try again later.", body = ErrorBody),
    ),
)]
pub async fn act(
    state: web::Data<AppState>,
    token: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The token first: a forged URL is refused whatever its body.
    state.runs.describe_resume_url(&token).await?;
    let body = super::optional_json(payload, &req).await?;
    let described = state.runs.use_resume_url(&token, body).await?;
    Ok(HttpResponse::Ok().json(view(described)))
}

/// A resume URL's step on the wire.
fn view(described: Described) -> ResumeUrlView {
    let Described { claims, entry, run_status, used_at } = described;
    let effect = match (entry.step_type, claims.action) {
        (StepType::Approval, Action::Resume) => "approve",
        (StepType::Approval, Action::Deny) => "deny",
        (StepType::Input, Action::Resume) => "submit",
        (StepType::Event, Action::Resume) => "deliver",
        (_, _) => "fail",
    };
    let text = |key: &str| entry.config.get(key).and_then(|v| v.as_str()).map(str::to_string);
    ResumeUrlView {
        ok: true,
        run_id: claims.run_id,
        run_status: run_status.as_str().to_string(),
        label: claims.label,
        kind: entry.step_type.as_str().to_string(),
        action: claims.action.as_str().to_string(),
        effect: effect.to_string(),
        message: text("message"),
        prompt: text("prompt"),
        schema: entry.config.get("schema").filter(|s| !s.is_null()).cloned(),
        event: text("event"),
        expires_at: iso(claims.expires_at),
        decided: entry.status != StepStatus::Started,
        used_at: used_at.map(iso),
    }
}
