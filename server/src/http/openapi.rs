//! The OpenAPI 3.1 document of the HTTP API, generated from the code: the handlers'
//! `#[utoipa::path]` annotations (route, parameters, bodies, statuses) and the wire types'
//! schemas (`script_runner_wire`, feature `openapi`). `GET /openapi.json` serves it and
//! `script-runner openapi` prints it.
//!
//! What keeps it true:
//! - every route the server registers ([`super::registered`]) is in the document and every
//!   operation of the document is registered (`tests::the_document_lists_every_route_and_no_other`);
//! - `ErrorBody.error.code` enumerates [`Code::ALL`], the one list `ApiError::code` draws from;
//! - the integration tests validate every JSON answer of the suite against the document
//!   (`tests/common/mod.rs`, `TestServer::request`).
//!
//! # A `text/event-stream` route
//!
//! A Server-Sent-Events answer is a `text/event-stream` content whose schema is a string (the
//! stream's text); its description names each event type (`event:` field) and the schema of
//! its `data:` (a wire type, registered in `components(schemas(...))` so it is in the document
//! even though no JSON body names it):
//!
//! ```ignore
//! #[utoipa::path(
//!     get,
//!     path = "/events",
//!     tag = "service",
//!     responses(
//!         (status = 200, content_type = "text/event-stream", body = String,
//!          description = "Events, one per `event:`/`data:` pair: `job` (data: `JobEvent`), \
//!                         `run` (data: `RunEvent`); a `: keep-alive` comment every 15 s."),
//!     ),
//! )]
//! ```
//!
//! A route that answers JSON or a stream by `Accept` (or a query parameter) lists both
//! contents for its `200`:
//!
//! ```ignore
//! responses((status = 200, description = "A page (JSON), or with `follow=1` / `Accept:
//!     text/event-stream` the log as it grows: events `line` (data: the text) and `end`.",
//!     content((LogPage = "application/json"), (String = "text/event-stream"))))
//! ```
//!
//! The test harness validates only JSON answers; an answer of another content type must be one
//! the document lists for its route and status.

use std::borrow::Cow;
use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToSchema};

use script_runner_wire::events::{LifecycleEvent, OutputChunk, OutputLine, OutputNotStored, StreamDropped};
use script_runner_wire::jobs::{Accepted, BytesPage, JobStatus, JobView, LinesPage, LogStream};
use script_runner_wire::runs::{RunBytesPage, RunLinesPage, RunStatus};

use super::error::Code;
use super::{cluster, jobs, runs, PUBLIC};

/// The document's skeleton as utoipa derives it; [`document`] adds the conventions every
/// route shares (authentication, the error answers every route can give).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "script-runner",
        description = "Runs whitelisted scripts as child processes over HTTP, with durable \
                       workflow runs. Every error answers `{\"ok\": false, \"error\": {\"code\", \
                       \"message\"}}` (`ErrorBody`); `code` is one of the enumerated codes."
    ),
    paths(
        super::ui::root,
        super::ui::redirect,
        super::ui::index,
        super::ui::file,
        super::health,
        super::metrics::scrape,
        serve,
        jobs::run,
        jobs::scripts,
        jobs::list,
        jobs::get,
        jobs::logs,
        jobs::cancel,
        jobs::callbacks,
        cluster::status,
        super::events::feed,
        cluster::job_logs,
        cluster::run_logs,
        cluster::run_action,
        cluster::run_approval,
        cluster::run_input,
        cluster::run_event,
        cluster::run_resume_url,
        super::flows::list,
        runs::launch,
        runs::list,
        runs::get,
        runs::callbacks,
        runs::cancel,
        runs::events,
        runs::logs,
        runs::pause,
        runs::resume,
        runs::fork,
        runs::approve,
        runs::submit_input,
        runs::deliver_event,
        super::resume::describe,
        super::resume::act,
        runs::record_step,
        runs::get_step,
        runs::begin_step,
        runs::wait_step,
        runs::record_attempt,
        runs::progress,
    ),
    // The events' bodies: no JSON answer names them, the streams' descriptions do.
    components(schemas(ErrorBody, OutputChunk, OutputLine, OutputNotStored, LifecycleEvent, StreamDropped)),
    tags(
        (name = "ui", description = "The dashboard's page and files (no token: they hold no data)."),
        (name = "service", description = "The server itself: health, this document, the cluster."),
        (name = "jobs", description = "Scripts run as jobs (the Node.js script-runner's API)."),
        (name = "runs", description = "Durable workflow runs."),
        (name = "steps", description = "The step protocol a workflow process speaks (run token)."),
        (name = "internal", description = "What the nodes of a cluster ask each other (node token)."),
    )
)]
struct ApiDoc;

/// The document as JSON text (pretty), built once.
pub fn json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| document().to_pretty_json().unwrap_or_default())
}

/// The document: utoipa's derivation plus the shared conventions. Security: the server's
/// token (`bearer`) on every route but [`PUBLIC`]; the run token (`runToken`) on the step
/// routes (`/api/internal/script-runs/`); the node token (`nodeToken`) on the cluster's
/// internal routes. Every secured operation can answer `401`, every operation but the public
/// ones `500` and `503`, each with an [`ErrorBody`]. (Built on utoipa's types rather than as a
/// `serde_json::Value`, which would sort every object's keys: the schemas keep the wire's
/// field order.)
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let bearer = |description: &str| {
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build())
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme("bearer", bearer("`server.authToken` of config.json (when it is set)."));
    components.add_security_scheme("runToken", bearer("`SCRIPT_RUN_TOKEN` of the run's execution (its environment)."));
    components.add_security_scheme(
        "nodeToken",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            crate::cluster::peer::TOKEN_HEADER,
            "The secret the node registered in the cluster's database.",
        ))),
    );
    let requirement = |name: &str| vec![SecurityRequirement::new(name, Vec::<String>::new())];
    doc.security = Some(requirement("bearer"));
    let error = |description: &str| -> RefOr<Response> {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
        RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let security = if public {
            Vec::new()
        } else if path.starts_with("/api/internal/cluster/") {
            requirement("nodeToken")
        } else if path.starts_with("/api/internal/") {
            requirement("runToken")
        } else {
            requirement("bearer")
        };
        let changes = [&mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in changes.into_iter().flatten() {
            operation.responses.responses.entry("403".into()).or_insert_with(|| {
                error("`FORBIDDEN`: a browser sent this from another site (`Origin`, `Sec-Fetch-Site`).")
            });
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(security.clone());
            if public {
                continue;
            }
            let responses = &mut operation.responses.responses;
            responses.entry("401".into()).or_insert_with(|| error("`UNAUTHORIZED`: a missing or wrong token."));
            responses.entry("500".into()).or_insert_with(|| error("`INTERNAL_ERROR`: an unexpected failure (logged)."));
            responses.entry("503".into()).or_insert_with(|| {
                error(
                    "`SHUTTING_DOWN`, `STORE_UNAVAILABLE` (with `Retry-After`), `NODE_FENCED`, `LOG_OWNER_DOWN` \
                     or `RUN_OWNER_DOWN`: try again later or elsewhere.",
                )
            });
        }
    }
    // A fork's body is optional (none forks from the start); utoipa marks every typed body
    // required.
    let fork = doc.paths.paths.get_mut("/api/script-runs/{id}/fork").and_then(|item| item.post.as_mut());
    if let Some(body) = fork.and_then(|operation| operation.request_body.as_mut()) {
        body.required = Some(Required::False);
    }
    // A resume URL's body is optional too (an approval needs none).
    let resume = doc.paths.paths.get_mut("/api/resume/{token}").and_then(|item| item.post.as_mut());
    if let Some(body) = resume.and_then(|operation| operation.request_body.as_mut()) {
        body.required = Some(Required::False);
    }
    doc
}

/// `GET /openapi.json`: this document (no token needed, see [`super::authenticate`]).
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)),
)]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(json())
}

/// The error envelope `{"ok": false, "error": {"code", "message"}}` (`script_runner_wire::
/// ErrorBody`), its `code` enumerated from [`Code::ALL`]. Written by hand: the list of codes
/// is the server's, not the wire crate's.
pub struct ErrorBody;

impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let detail = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "code",
                string().enum_values(Some(codes)).description(Some(
                    "Stable, for programs. A code answered by another node of the cluster is \
                     passed on as it was.",
                )),
            )
            .required("code")
            .property("message", string().description(Some("What happened, in words.")))
            .required("message");
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Every error answer."))
            .property("ok", ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([false])))
            .required("ok")
            .property("error", detail)
            .required("error")
            .into()
    }
}

impl ToSchema for ErrorBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorBody")
    }
}

/// Schema-only types whose schema is "any of these wire types" (one route, one status, more
/// than one shape).
macro_rules! any_of {
    ($($(#[$doc:meta])* $name:ident = $($member:ty)|+;)*) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    AnyOfBuilder::new()
                        $(.item(RefOr::Ref(Ref::from_schema_name(<$member as ToSchema>::name()))))+
                        .into()
                }
            }

            impl ToSchema for $name {
                fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                    $(
                        schemas.push((<$member as ToSchema>::name().into_owned(), <$member as PartialSchema>::schema()));
                        <$member as ToSchema>::schemas(schemas);
                    )+
                }
            }
        )*
    };
}

any_of! {
    /// `POST /run`'s `200`: a sync job's end, or the `202` answer again (a deduplicated async job).
    JobOrAccepted = JobView | Accepted;
    /// A job log page: bytes (`unit=bytes`, the default) or lines (`unit=lines`).
    JobLogPage = BytesPage | LinesPage;
    /// A run execution's log page: bytes or lines.
    RunLogPage = RunBytesPage | RunLinesPage;
}

/// The query of a log page (`GET /jobs/{id}/logs` and the cluster's copy of it).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "a schema only: the handler reads the query by hand (upstream's errors)")]
pub(super) struct LogQuery {
    /// `stdout` (the default) or `stderr`.
    stream: Option<LogStream>,
    /// `bytes` (the default) or `lines`.
    #[param(value_type = Option<String>, pattern = "^(bytes|lines)?$")]
    unit: Option<String>,
    /// Where the page starts, in the unit (default 0).
    offset: Option<u64>,
    /// Longest page, in the unit (0 or absent: 65536 bytes or 100 lines; at most 1048576 bytes
    /// or 10000 lines).
    limit: Option<u64>,
}

/// The query of a run execution's log page.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "a schema only: the handler reads the query by hand")]
pub(super) struct RunLogQuery {
    /// `stdout` (the default) or `stderr`.
    stream: Option<LogStream>,
    /// `bytes` (the default) or `lines`.
    #[param(value_type = Option<String>, pattern = "^(bytes|lines)?$")]
    unit: Option<String>,
    /// Where the page starts, in the unit (default 0).
    offset: Option<u64>,
    /// Longest page, in the unit (0 or absent: 65536 bytes or 100 lines; at most 1048576 bytes
    /// or 10000 lines).
    limit: Option<u64>,
    /// Which execution (1 for the first); the latest when absent.
    attempt: Option<u64>,
}

/// The query of `GET /jobs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema only: the handler reads the query by hand")]
pub(super) struct JobListQuery {
    /// Only jobs of this status.
    status: Option<JobStatus>,
    /// Only jobs of this script.
    script_id: Option<String>,
    /// Only the job started under this key.
    idempotency_key: Option<String>,
    /// Page size (default 50, at most 500).
    limit: Option<u64>,
    /// Jobs to skip.
    offset: Option<u64>,
}

/// The query of `GET /api/script-runs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema only: the handler reads the query by hand")]
pub(super) struct RunListQuery {
    /// Only runs of this status.
    status: Option<RunStatus>,
    /// Only runs of this workflow or name.
    script_name: Option<String>,
    /// Page size (default 50, at most 500).
    limit: Option<u64>,
    /// Runs to skip.
    offset: Option<u64>,
}

/// The query of a step's long poll.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema only: the handler reads the query by hand")]
pub(super) struct WaitQuery {
    /// How long to wait at most, in milliseconds (default 25000).
    timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;

    /// The document as JSON.
    fn document() -> Value {
        serde_json::from_str(json()).expect("the document is JSON")
    }

    /// `(METHOD, path)` of every operation of the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let mut all = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                all.insert((method.to_uppercase(), path.clone()));
            }
        }
        all
    }

    /// The pattern of a route that answers JSON or a stream (the module's documentation), kept
    /// compiling here.
    #[utoipa::path(
        get,
        path = "/example/{id}/logs",
        operation_id = "exampleLogs",
        params(("id" = String, Path, description = "Job id.")),
        responses(
            (status = 200, description = "A page (JSON), or with `follow=1` / `Accept: text/event-stream` the \
                log as it grows: events `line` (data: the line) and `end` (data: the job, `JobView`).",
             content((JobLogPage = "application/json"), (String = "text/event-stream"))),
        ),
    )]
    #[allow(dead_code, reason = "an example of an annotation; never routed")]
    async fn streaming_example() {}

    #[test]
    fn a_stream_is_described_as_text_event_stream_beside_json() {
        #[derive(OpenApi)]
        #[openapi(paths(streaming_example))]
        struct Example;
        let doc = serde_json::to_value(Example::openapi()).expect("the example is JSON");
        let content = &doc["paths"]["/example/{id}/logs"]["get"]["responses"]["200"]["content"];
        assert_eq!(content["text/event-stream"]["schema"]["type"], json!("string"), "{content}");
        assert_eq!(content["application/json"]["schema"]["$ref"], json!("#/components/schemas/JobLogPage"));
    }

    #[test]
    fn the_document_lists_every_route_and_no_other() {
        let registered: BTreeSet<(String, String)> = super::super::registered().into_iter().collect();
        let documented = documented();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "routes registered in http/mod.rs (`table`) but missing from the OpenAPI document: {undocumented:?}; \
             annotate their handlers with #[utoipa::path] and list them in `paths(...)` of http/openapi.rs"
        );
        let unanswered: Vec<_> = documented.difference(&registered).collect();
        assert!(
            unanswered.is_empty(),
            "operations in the OpenAPI document that no route answers: {unanswered:?}; \
             register them in http/mod.rs (`table`) or remove them from http/openapi.rs"
        );
    }

    #[test]
    fn the_error_body_enumerates_every_code() {
        let doc = document();
        let codes = &doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["properties"]["code"]["enum"];
        let expected: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, &json!(expected));
    }

    #[test]
    fn the_status_enums_spell_what_the_server_writes() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let jobs: Vec<&str> = crate::jobs::model::JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(schemas["JobStatus"]["enum"], json!(jobs));
        let runs: Vec<&str> = crate::runs::model::RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(schemas["RunStatus"]["enum"], json!(runs));
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_reference_defined() {
        let doc = document();
        assert_eq!(doc["openapi"], json!("3.1.0"));
        let text = json();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "#/components/schemas/{name} is referenced, not defined");
        }
    }
}
