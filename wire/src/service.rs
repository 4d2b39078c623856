//! Answers about the service itself: health and the cluster's nodes.

use serde::{Deserialize, Serialize};

/// `GET /healthz` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always true: the server answers.
    pub ok: bool,
}

/// `GET /cluster` answer. Outside a cluster (SQLite) `cluster` is false, `nodes` empty and
/// `node`/`leaseSec` absent. Fields in the order the server has always written them (sorted:
/// they went through a `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Whether this server is a node of a cluster (it is on PostgreSQL).
    pub cluster: bool,
    /// `cluster.leaseSec`: how long a node stays alive without a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease_sec: Option<u64>,
    /// The id of the node that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub node: Option<String>,
    /// Every node, newest first.
    pub nodes: Vec<NodeView>,
    /// Always true.
    pub ok: bool,
}

/// A node of `GET /cluster` (fields sorted, as [`ClusterView`]'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Where other nodes reach it (`host:port`).
    pub advertise: String,
    /// Its `runner.maxConcurrent`.
    pub capacity: i32,
    /// ISO time it stopped or was declared dead.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ended_at: Option<String>,
    /// Its epoch: a restart under the same id is a new epoch.
    pub epoch: i64,
    /// ISO time of its last heartbeat.
    pub heartbeat_at: String,
    /// Its id (`cluster.nodeId`).
    pub id: String,
    /// ISO time its lease ends at.
    pub lease_until: String,
    /// Why it ended.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
    /// Jobs it runs now.
    pub running: i64,
    /// Runs it holds now.
    pub runs: i64,
    /// ISO time it joined.
    pub started_at: String,
    /// `up`, `draining`, `stopped` or `dead`.
    pub state: String,
}
