//! Running a checked flow: input queues, activations on their own threads, timeouts, and the
//! [`Journal`] a durable flow runs its activations through.
//!
//! [`run`] is the scheduler: each connected input of a node has a FIFO queue, a node starts when
//! each has a value (up to its `concurrency`), and the first failure or timeout ends the flow.
//! [`execute`] runs one activation.

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{Flow, Node, Source, Task};
use crate::BlockResult;

/// Runs a node activation; durable flows journal it (see [`Journal`]).
pub trait Journal: Send + Sync {
    /// Runs `run` for the activation `key` (the node id, then `id#2`, `id#3` ... for further
    /// activations) of node `node` with `inputs`, or returns its journaled outputs. By default
    /// it just runs `run`.
    fn activation(
        &self,
        _key: &str,
        _node: &Node,
        _inputs: &Map<String, Value>,
        run: &dyn Fn() -> BlockResult,
    ) -> BlockResult {
        run()
    }
}

/// Runs every activation directly.
pub struct NoJournal;

impl Journal for NoJournal {}

/// How a flow ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Whether every node succeeded.
    pub ok: bool,
    /// The flow's outputs (`outputs_from`).
    pub outputs: Map<String, Value>,
    /// The failing node and why.
    pub error: Option<String>,
}

struct Done {
    node: usize,
    key: String,
    result: BlockResult,
}

/// Runs a checked flow; `events` gets one JSON object per event (node started, node finished
/// with outputs or error, flow finished).
///
/// Activations run on their own threads; when the flow fails or a node times out, the threads
/// still running are left behind (the caller exits soon after).
pub fn run(
    flow: &Flow,
    given: &Map<String, Value>,
    journal: Arc<dyn Journal>,
    events: &mut dyn FnMut(Value),
) -> Finished {
    let index: HashMap<&str, usize> = flow.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let flow_inputs: Map<String, Value> = flow
        .inputs
        .iter()
        .map(|d| (d.handle.clone(), given.get(&d.handle).or(d.value.as_ref()).cloned().unwrap_or(Value::Null)))
        .collect();
    // Queues of each node's connected inputs: handle -> values.
    let mut queues: Vec<HashMap<String, VecDeque<Value>>> = vec![HashMap::new(); flow.nodes.len()];
    // Consumers of each (node, output).
    let mut consumers: HashMap<(usize, String), Vec<(usize, String)>> = HashMap::new();
    for (i, node) in flow.nodes.iter().enumerate() {
        for (handle, source) in &node.inputs {
            match source {
                Source::Nodes(links) => {
                    queues[i].insert(handle.clone(), VecDeque::new());
                    for (src, out) in links {
                        if let Some(&s) = index.get(src.as_str()) {
                            consumers.entry((s, out.clone())).or_default().push((i, handle.clone()));
                        }
                    }
                }
                // Flow inputs are static for the whole flow: every activation reads them.
                Source::Flow(_) | Source::Value(_) => {}
            }
        }
    }
    let mut running = vec![0usize; flow.nodes.len()];
    let mut activations = vec![0usize; flow.nodes.len()];
    // Nodes without connected inputs run once.
    let mut source_pending: Vec<bool> = queues.iter().map(HashMap::is_empty).collect();
    let mut last_outputs: HashMap<(String, String), Value> = HashMap::new();
    let (tx, rx) = mpsc::channel::<Done>();
    let mut deadlines: HashMap<String, (usize, Instant)> = HashMap::new();
    let mut failure: Option<String> = None;
    loop {
        // Start every activation that can start.
        if failure.is_none() {
            for (i, node) in flow.nodes.iter().enumerate() {
                while running[i] < node.concurrency && (source_pending[i] || all_queued(&queues[i])) {
                    source_pending[i] = false;
                    let inputs = take_inputs(node, &mut queues[i], &flow_inputs);
                    activations[i] += 1;
                    running[i] += 1;
                    let key =
                        if activations[i] == 1 { node.id.clone() } else { format!("{}#{}", node.id, activations[i]) };
                    let shown = redact(node, &inputs);
                    events(
                        json!({ "event": "node_started", "node": node.id, "activation": activations[i], "inputs": shown }),
                    );
                    if let Some(t) = node.timeout {
                        deadlines.insert(key.clone(), (i, Instant::now() + Duration::from_secs_f64(t)));
                    }
                    let (tx, node, journal) = (tx.clone(), node.clone(), Arc::clone(&journal));
                    std::thread::spawn(move || {
                        let work = || execute(&node, &inputs);
                        let result = journal.activation(&key, &node, &inputs, &work);
                        let _ = tx.send(Done { node: i, key, result });
                    });
                }
            }
        }
        if running.iter().all(|r| *r == 0) {
            break;
        }
        let wait = deadlines.values().map(|(_, d)| d.saturating_duration_since(Instant::now())).min();
        let done = match wait {
            Some(w) => rx.recv_timeout(w).ok(),
            None => rx.recv().ok(),
        };
        let Some(done) = done else {
            // A node timed out: the flow fails; its thread is left to end on its own.
            let now = Instant::now();
            if let Some((key, (i, _))) = deadlines.iter().find(|(_, (_, d))| *d <= now).map(|(k, v)| (k.clone(), *v)) {
                deadlines.remove(&key);
                let node = &flow.nodes[i];
                let message = format!("node {} timed out after {} s", node.id, node.timeout.unwrap_or(0.0));
                events(json!({ "event": "node_failed", "node": node.id, "error": message }));
                failure.get_or_insert(message);
                break;
            }
            continue;
        };
        deadlines.remove(&done.key);
        running[done.node] -= 1;
        let node = &flow.nodes[done.node];
        match done.result {
            Ok(outputs) => {
                events(json!({ "event": "node_finished", "node": node.id, "outputs": outputs }));
                if failure.is_some() {
                    continue;
                }
                for (handle, value) in outputs {
                    last_outputs.insert((node.id.clone(), handle.clone()), value.clone());
                    for (target, input) in consumers.get(&(done.node, handle)).into_iter().flatten() {
                        queues[*target].entry(input.clone()).or_default().push_back(value.clone());
                    }
                }
            }
            Err(e) => {
                let message = format!("node {} failed: {e}", node.id);
                events(json!({ "event": "node_failed", "node": node.id, "error": e.to_string() }));
                failure.get_or_insert(message);
                // Stop waiting for siblings: the flow has failed.
                break;
            }
        }
    }
    let outputs: Map<String, Value> = flow
        .outputs
        .iter()
        .map(|(handle, links)| {
            let value = links.iter().rev().find_map(|(n, o)| last_outputs.get(&(n.clone(), o.clone())).cloned());
            (handle.clone(), value.unwrap_or(Value::Null))
        })
        .collect();
    let ok = failure.is_none();
    events(json!({
        "event": "flow_finished",
        "status": if ok { "succeeded" } else { "failed" },
        "outputs": outputs,
        "error": failure,
    }));
    Finished { ok, outputs, error: failure }
}

/// Whether a node with connected inputs has a value queued on each (a node without any never
/// runs again).
fn all_queued(queues: &HashMap<String, VecDeque<Value>>) -> bool {
    !queues.is_empty() && queues.values().all(|q| !q.is_empty())
}

/// The inputs of a node's next activation: static values, flow inputs, and the first value
/// queued on each connected input.
fn take_inputs(
    node: &Node,
    queues: &mut HashMap<String, VecDeque<Value>>,
    flow_inputs: &Map<String, Value>,
) -> Map<String, Value> {
    let mut inputs = Map::new();
    for (handle, source) in &node.inputs {
        let value = match source {
            Source::Value(v) => v.clone(),
            Source::Flow(names) => names.iter().rev().find_map(|n| flow_inputs.get(n)).cloned().unwrap_or(Value::Null),
            Source::Nodes(_) => queues.get_mut(handle).and_then(VecDeque::pop_front).unwrap_or(Value::Null),
        };
        inputs.insert(handle.clone(), value);
    }
    inputs
}

/// The inputs as events show them: secrets (`contentMediaType: oomol/secret`) masked.
fn redact(node: &Node, inputs: &Map<String, Value>) -> Map<String, Value> {
    let Task::Block { manifest, .. } = &node.task else { return inputs.clone() };
    let mut shown = inputs.clone();
    for def in &manifest.inputs {
        let secret = def.json_schema.as_ref().and_then(|s| s.get("contentMediaType")).and_then(Value::as_str)
            == Some("oomol/secret");
        if secret && shown.get(&def.handle).is_some_and(|v| !v.is_null()) {
            shown.insert(def.handle.clone(), json!("***"));
        }
    }
    shown
}

/// Runs one activation of a node.
pub fn execute(node: &Node, inputs: &Map<String, Value>) -> BlockResult {
    match &node.task {
        Task::Block { name, .. } => crate::run_block(name, inputs),
        Task::Values(values) => Ok(values.clone()),
    }
}
