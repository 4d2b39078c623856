//! The transport: one shared `ureq` agent with timeouts, and errors that say what happened
//! (server down, HTTP error with the server's code, time-out, malformed answer).

use std::sync::OnceLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Where a script-runner listens unless a block is told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No server answers at the address.
    #[error("cannot reach script-runner at {url}: {message}")]
    Unreachable {
        /// The server address.
        url: String,
        /// The transport's reason.
        message: String,
    },
    /// The server answered with an error status.
    #[error("script-runner answered HTTP {status} {code}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The server's error code (`JOB_NOT_FOUND`, ...), or `HTTP_ERROR` without one.
        code: String,
        /// The server's message, or the body.
        message: String,
    },
    /// The server did not answer in time.
    #[error("script-runner at {url} did not answer within {seconds} s")]
    Timeout {
        /// The server address.
        url: String,
        /// The time limit.
        seconds: u64,
    },
    /// The answer is not what the API promises.
    #[error("malformed response from script-runner at {url}: {message}")]
    Malformed {
        /// The request URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| ureq::AgentBuilder::new().timeout_connect(CONNECT_TIMEOUT).build())
}

/// A script-runner server: its address, the bearer token, and how long a request may take.
#[derive(Debug, Clone)]
pub struct Server {
    url: String,
    token: Option<String>,
    timeout: Duration,
}

impl Server {
    /// A server at `url` (trailing slashes ignored), with an optional bearer token, whose
    /// requests may each take `timeout`.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Server {
        Server { url: url.trim_end_matches('/').to_string(), token: token.filter(|t| !t.is_empty()), timeout }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, HttpError> {
        self.send("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: Value) -> Result<Value, HttpError> {
        self.send("POST", path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value, HttpError> {
        self.send("DELETE", path, None)
    }

    /// The same server, whose requests may each take `timeout` (e.g. a request that answers
    /// when a whole job has ended).
    pub fn with_timeout(&self, timeout: Duration) -> Server {
        Server { timeout, ..self.clone() }
    }

    /// `method path` with an optional JSON body, the answer read as `T` (a wire type).
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, HttpError> {
        let url = format!("{}{path}", self.url);
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| HttpError::Malformed { url: url.clone(), message: format!("request not JSON: {e}") })?;
        let answer = self.send(method, path, body)?;
        serde_json::from_value(answer).map_err(|e| HttpError::Malformed { url, message: e.to_string() })
    }

    /// `method path` with an optional JSON body; the answer as JSON.
    pub fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, HttpError> {
        let url = format!("{}{path}", self.url);
        let mut request = agent().request(method, &url).timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(response) => response
                .into_json::<Value>()
                .map_err(|e| HttpError::Malformed { url: url.clone(), message: format!("not JSON: {e}") }),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let field = |key: &str| body["error"][key].as_str().map(str::to_string);
                Err(HttpError::Http {
                    status,
                    code: field("code").unwrap_or_else(|| "HTTP_ERROR".to_string()),
                    message: field("message").unwrap_or_else(|| text.chars().take(500).collect()),
                })
            }
            Err(ureq::Error::Transport(transport)) => Err(self.transport_error(&transport)),
        }
    }

    fn transport_error(&self, transport: &ureq::Transport) -> HttpError {
        let timed_out = std::error::Error::source(transport)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock));
        if timed_out && transport.kind() != ureq::ErrorKind::ConnectionFailed {
            return HttpError::Timeout { url: self.url.clone(), seconds: self.timeout.as_secs() };
        }
        let message = transport.message().map_or_else(|| transport.kind().to_string(), str::to_string);
        let message = match std::error::Error::source(transport) {
            Some(source) => format!("{message}: {source}"),
            None => message,
        };
        HttpError::Unreachable { url: self.url.clone(), message }
    }

    /// The server address.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Percent-encodes one path segment (ids and labels come from inputs).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn query(text: &str) -> String {
    segment(text)
}

/// A field of an answer, or a malformed-answer error naming it.
pub fn field<'a>(answer: &'a Value, key: &str, url: &str) -> Result<&'a Value, HttpError> {
    answer.get(key).ok_or_else(|| HttpError::Malformed { url: url.to_string(), message: format!("no {key:?} field") })
}
