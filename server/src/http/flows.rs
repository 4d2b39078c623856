//! `GET /api/flows`: the flows a run may execute (`workflows.flowsDir`), as the dashboard shows
//! them: their nodes and the connections between them. The answer's types are defined here (not
//! in the wire crate): only the dashboard reads them, no SDK.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use actix_web::{web, HttpResponse};
use script_runner_blocks::flow::{self, Flow, Source, Task};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{ApiError, AppState};

/// What a connection's `from.node` is when the value comes from one of the flow's own inputs
/// (`from_flow`) rather than from a node: no node id can be spelled so in a flow file that a
/// person reads, and the dashboard shows it as is.
pub const FLOW_INPUTS: &str = "<flow>";

/// `GET /api/flows` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowsView {
    /// Always true.
    pub ok: bool,
    /// Every folder of `workflows.flowsDir` holding a `flow.oo.yaml`, by name.
    pub flows: Vec<FlowView>,
}

/// One flow of [`FlowsView`]. A flow that does not load (bad YAML, an unknown block, a cycle)
/// has `error` and no nodes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowView {
    /// Its folder's name: what `POST /api/script-runs` `{"flow": name}` runs.
    pub name: String,
    /// The flow's `title`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// The nodes, in file order.
    pub nodes: Vec<FlowNodeView>,
    /// Every value passed from a node's output (or a flow input, `from.node` = `"<flow>"`) to
    /// a node's input.
    pub connections: Vec<FlowConnection>,
    /// Why the flow does not load (every problem, one per line).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// One node of a flow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowNodeView {
    /// The node's id (`node_id`).
    pub id: String,
    /// The block it runs (`run-script`, ...), or `values` for a value node.
    pub block: String,
    /// Its inputs given as values in the file (a value node: its values), by handle. Inputs
    /// fed by a connection are in [`FlowView::connections`] instead.
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
}

/// A connection: `from.node`'s output `from.output` feeds `to.node`'s input `to.input`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowConnection {
    /// Where the value comes from.
    pub from: FlowOutputRef,
    /// Where it goes.
    pub to: FlowInputRef,
}

/// A node's output (or a flow input when `node` is `"<flow>"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowOutputRef {
    /// The node id.
    pub node: String,
    /// The output handle.
    pub output: String,
}

/// A node's input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowInputRef {
    /// The node id.
    pub node: String,
    /// The input handle.
    pub input: String,
}

/// `GET /api/flows`: every flow of `workflows.flowsDir`, checked as a launch checks it (a flow
/// that does not load is listed with its `error`, never a failure of the whole answer). A
/// missing folder is no flows.
#[utoipa::path(
    get,
    path = "/api/flows",
    operation_id = "listFlows",
    tag = "runs",
    responses((status = 200, description = "The flows, by name.", body = FlowsView)),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let dir = state.flows_dir.clone();
    let flows = crate::sync::blocking(move || read_flows(&dir)).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(FlowsView { ok: true, flows }))
}

/// The flows of `dir`, by name. `self::` blocks resolve against the folder's parent (the
/// package root), as a run of them does.
fn read_flows(dir: &Path) -> Vec<FlowView> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let file = entry.path().join("flow.oo.yaml");
        if file.is_file() {
            files.insert(entry.file_name().to_string_lossy().to_string(), file);
        }
    }
    let root = dir.parent().map(Path::to_path_buf);
    files
        .into_iter()
        .map(|(name, file)| match flow::load(&file, root.as_deref(), &Map::new()) {
            Ok(flow) => view_of(name, &flow),
            Err(problems) => FlowView {
                name,
                description: None,
                nodes: Vec::new(),
                connections: Vec::new(),
                error: Some(problems.0.join("\n")),
            },
        })
        .collect()
}

/// A loaded flow as the answer shows it.
fn view_of(name: String, flow: &Flow) -> FlowView {
    let mut nodes = Vec::new();
    let mut connections = Vec::new();
    for node in &flow.nodes {
        let (block, mut inputs) = match &node.task {
            Task::Block { name, .. } => (name.clone(), Map::new()),
            Task::Values(values) => ("values".to_string(), values.clone()),
        };
        for (handle, source) in &node.inputs {
            let to = || FlowInputRef { node: node.id.clone(), input: handle.clone() };
            match source {
                Source::Value(value) => {
                    inputs.insert(handle.clone(), value.clone());
                }
                Source::Nodes(from) => connections.extend(from.iter().map(|(from_node, output)| FlowConnection {
                    from: FlowOutputRef { node: from_node.clone(), output: output.clone() },
                    to: to(),
                })),
                Source::Flow(from) => connections.extend(from.iter().map(|input| FlowConnection {
                    from: FlowOutputRef { node: FLOW_INPUTS.to_string(), output: input.clone() },
                    to: to(),
                })),
            }
        }
        nodes.push(FlowNodeView { id: node.id.clone(), block, inputs });
    }
    FlowView { name, description: flow.title.clone(), nodes, connections, error: None }
}
