//! The dashboard: the files of `server/ui/`, embedded in the binary at build time and served at
//! `<basePath>/ui/` without a token (they hold no data: every API call the page makes carries
//! the token). `GET <basePath>/` redirects there.
//!
//! Every file is answered with a strict `Content-Security-Policy` (no inline script or style,
//! nothing from another origin, no framing), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, an `ETag` (a hash of the content) and
//! `Cache-Control: no-cache`: the browser revalidates each time and gets `304` while the binary
//! is the same, so a new release is never hidden behind a cached old page.

use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use include_dir::{include_dir, Dir};

use super::{ApiError, AppState, Code};

/// The page's files, as they were when the binary was built.
static UI: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ui");

/// The policy of every UI file: only this origin's scripts, styles, images (and `data:` ones),
/// fetches and fonts; no inline script, no plugin, no `<base>`, no form posting elsewhere, no
/// framing (clickjacking).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /`: redirects (`302`) to the dashboard, `<basePath>/ui/`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "root",
    tag = "ui",
    responses((status = 302, description = "To the dashboard (`Location: <basePath>/ui/`).",
               headers(("Location" = String, description = "`<basePath>/ui/`")))),
)]
pub async fn root(state: web::Data<AppState>) -> HttpResponse {
    to_dashboard(&state)
}

/// `GET /ui`: redirects (`302`) to `<basePath>/ui/`, where the page's relative links resolve.
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "uiRedirect",
    tag = "ui",
    responses((status = 302, description = "To `<basePath>/ui/`.",
               headers(("Location" = String, description = "`<basePath>/ui/`")))),
)]
pub async fn redirect(state: web::Data<AppState>) -> HttpResponse {
    to_dashboard(&state)
}

fn to_dashboard(state: &AppState) -> HttpResponse {
    HttpResponse::Found().insert_header((header::LOCATION, format!("{}/ui/", state.base_path))).finish()
}

/// `GET /ui/`: the dashboard's page (`index.html`).
#[utoipa::path(
    get,
    path = "/ui/",
    operation_id = "uiIndex",
    tag = "ui",
    responses(
        (status = 200, description = "The dashboard's page.", content((String = "text/html"))),
        (status = 304, description = "Not modified (`If-None-Match` named its `ETag`)."),
    ),
)]
pub async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&req, "index.html")
}

/// `GET /ui/{path}`: a file of the dashboard (`index.html`, `app.js`, `app.css`, `js/...`).
#[utoipa::path(
    get,
    path = "/ui/{path}",
    operation_id = "uiFile",
    tag = "ui",
    params(("path" = String, Path, description = "The file, e.g. `app.js` or `js/api.js`.")),
    responses(
        (status = 200, description = "The file, typed by its extension.",
         content((String = "text/html"), (String = "text/css"), (String = "text/javascript"),
                 (String = "image/svg+xml"), (String = "image/png"), (String = "image/x-icon"),
                 (String = "font/woff2"), (String = "text/plain"), (String = "application/octet-stream"))),
        (status = 304, description = "Not modified (`If-None-Match` named its `ETag`)."),
        (status = 404, description = "`NOT_FOUND`: no such file.", body = super::openapi::ErrorBody),
    ),
)]
pub async fn file(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    serve(&req, if name.is_empty() { "index.html" } else { &name })
}

/// Answers the embedded file `name` (a path inside `server/ui/`), or `404 NOT_FOUND`.
fn serve(req: &HttpRequest, name: &str) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::Run {
        status: actix_web::http::StatusCode::NOT_FOUND,
        code: Code::NotFound,
        message: format!("the dashboard has no file {name:?}"),
    };
    let file = UI.get_file(name).ok_or_else(not_found)?;
    let etag = etag_of(name, file.contents());
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut answer = if matches { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    headers(&mut answer, &etag);
    if matches {
        return Ok(answer.finish());
    }
    Ok(answer.content_type(content_type(name)).body(file.contents()))
}

/// The headers every UI answer carries (see the module's documentation).
fn headers(answer: &mut HttpResponseBuilder, etag: &str) {
    answer
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag.to_string()));
}

/// A strong `ETag` of a file: the first 16 bytes of its SHA-256, quoted; computed once per file.
fn etag_of(name: &str, contents: &[u8]) -> String {
    static TAGS: OnceLock<std::sync::Mutex<HashMap<String, String>>> = OnceLock::new();
    let tags = TAGS.get_or_init(Default::default);
    let mut tags = tags.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tags.entry(name.to_string())
        .or_insert_with(|| format!("\"{}\"", &crate::runs::launch::sha256_hex(contents)[..32]))
        .clone()
}

/// The content type of a file, by its extension (text in UTF-8).
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_embedded() {
        assert!(UI.get_file("index.html").is_some(), "server/ui/index.html is embedded");
    }

    #[test]
    fn files_are_typed_by_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("js/api.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
