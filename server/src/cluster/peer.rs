//! Asking another node: a log page of a job it ran (logs stay on the node that ran the job), or
//! a decision about a workflow run it holds (cancel, pause, resume, an approval).
//!
//! Requests go to the node's advertised address, on its internal routes
//! (`/api/internal/cluster/...`), with the secret it registered ([`TOKEN_HEADER`]): only a
//! process that can read the cluster's database can make them. Blocking (ureq): call it off the
//! async workers.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::db::cluster::NodeRow;

/// The header that carries the node's secret.
pub const TOKEN_HEADER: &str = "x-script-runner-node-token";
/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole answer may take (a log page is at most a few MB).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// What asking a node gave when it did not answer 200.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The node could not be reached, or did not answer in time.
    #[error("node {node} at {address} did not answer: {reason}")]
    Unreachable {
        /// Its id.
        node: String,
        /// Where it was asked.
        address: String,
        /// Why.
        reason: String,
    },
    /// It answered an error: passed on as it is.
    #[error("node {node} answered {status}: {message}")]
    Answered {
        /// Its id.
        node: String,
        /// The status.
        status: u16,
        /// The error's code, e.g. `JOB_NOT_FOUND`.
        code: String,
        /// The error's message.
        message: String,
    },
}

/// `GET <node>/api/internal/cluster<path>` and its JSON answer.
pub fn get<T: DeserializeOwned>(node: &NodeRow, path: &str, query: &[(&str, String)]) -> Result<T, PeerError> {
    call(node, "GET", path, query, None)
}

/// Which log page to ask a node for (a job's, or a run execution's with `attempt`).
#[derive(Debug, Clone)]
pub struct LogPage {
    /// `/jobs/<id>/logs` or `/script-runs/<id>/logs`, under the internal prefix.
    pub path: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// `bytes` or `lines`.
    pub unit: &'static str,
    /// Where the page starts.
    pub offset: u64,
    /// Its most bytes or lines.
    pub limit: u64,
    /// The run's execution, if not the latest.
    pub attempt: Option<i32>,
}

/// A log page from the node that has the log, as the JSON of its public route.
pub fn log_page<T: DeserializeOwned>(node: &NodeRow, page: &LogPage) -> Result<T, PeerError> {
    let mut query = vec![
        ("stream", page.stream.to_string()),
        ("unit", page.unit.to_string()),
        ("offset", page.offset.to_string()),
        ("limit", page.limit.to_string()),
    ];
    if let Some(attempt) = page.attempt {
        query.push(("attempt", attempt.to_string()));
    }
    get(node, &page.path, &query)
}

impl PeerError {
    /// The node a log is on, when it could not be reached (the caller answers
    /// `LOG_OWNER_DOWN`); `None` for an error it answered (passed on).
    pub fn unreachable_node(&self) -> Option<&str> {
        match self {
            PeerError::Unreachable { node, .. } => Some(node),
            PeerError::Answered { .. } => None,
        }
    }
}

/// `POST <node>/api/internal/cluster<path>` with a JSON body, and its JSON answer.
pub fn post<T: DeserializeOwned>(node: &NodeRow, path: &str, body: &serde_json::Value) -> Result<T, PeerError> {
    call(node, "POST", path, &[], Some(body))
}

fn call<T: DeserializeOwned>(
    node: &NodeRow,
    method: &str,
    path: &str,
    query: &[(&str, String)],
    body: Option<&serde_json::Value>,
) -> Result<T, PeerError> {
    let agent = ureq::AgentBuilder::new().timeout_connect(CONNECT_TIMEOUT).timeout(ANSWER_TIMEOUT).build();
    let address = format!("{}/api/internal/cluster{path}", node.advertise);
    let unreachable =
        |reason: String| PeerError::Unreachable { node: node.id.clone(), address: address.clone(), reason };
    let mut request = agent.request(method, &address).set(TOKEN_HEADER, &node.token);
    for (key, value) in query {
        request = request.query(key, value);
    }
    let answer = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match answer {
        Ok(answer) => answer.into_json::<T>().map_err(|e| unreachable(format!("unreadable answer: {e}"))),
        Err(ureq::Error::Status(status, answer)) => {
            let body: serde_json::Value = answer.into_json().unwrap_or_default();
            let text = |key: &str| body["error"][key].as_str().unwrap_or_default().to_string();
            Err(PeerError::Answered { node: node.id.clone(), status, code: text("code"), message: text("message") })
        }
        Err(e) => Err(unreachable(e.to_string())),
    }
}
