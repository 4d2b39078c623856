//! The flow runner: reads OOMOL flow YAML (`flows/<name>/flow.oo.yaml`), checks the whole flow
//! before anything runs, and executes it the way OOMOL's engine does.
//!
//! Checks (every problem is reported, each naming the node and handle): unknown block, unknown
//! input or output handle (with a "did you mean" hint), an input handle of the block that the
//! node does not list with a value or a connection (even one with a default: OOMOL's engine
//! runs a node only when every handle is listed), a value that does not match the handle's
//! `json_schema`, a duplicate node id, a cycle. OOMOL skips such nodes silently; we refuse to
//! start, so a flow that passes this check is one OOMOL runs.
//!
//! Execution is data-driven: each connected input of a node has a FIFO queue; a node runs when
//! each connected input has a queued value (static values are always there), independent nodes
//! run in parallel, a node fed twice runs twice (at most `concurrency` activations at once),
//! and the first failure or timeout stops the flow, naming the node; downstream nodes do not run.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::manifest::{did_you_mean, handles, HandleDef, Manifest};
use crate::BlockResult;

/// Where an input's value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A static value.
    Value(Value),
    /// Outputs of other nodes (several sources allowed; each arrival is queued).
    Nodes(Vec<(String, String)>),
    /// The flow's own inputs.
    Flow(Vec<String>),
}

/// What a node runs.
#[derive(Debug, Clone)]
pub enum Task {
    /// A block run in-process by name (our blocks).
    Block {
        /// The block's name.
        name: String,
        /// Its manifest.
        manifest: Manifest,
    },
    /// A value node: its handles are its outputs.
    Values(Map<String, Value>),
}

/// One node of a flow.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// What it runs.
    pub task: Task,
    /// Input handle -> source.
    pub inputs: BTreeMap<String, Source>,
    /// Seconds before an activation fails the flow.
    pub timeout: Option<f64>,
    /// Activations at once.
    pub concurrency: usize,
}

/// A checked flow, ready to run.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The flow file.
    pub path: PathBuf,
    /// Its title.
    pub title: Option<String>,
    /// The nodes not ignored, in file order.
    pub nodes: Vec<Node>,
    /// The flow's inputs.
    pub inputs: Vec<HandleDef>,
    /// Flow output handle -> sources.
    pub outputs: Vec<(String, Vec<(String, String)>)>,
}

/// Every problem found in a flow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s):", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The package root of a flow file: `flows/<name>/flow.oo.yaml` two levels up.
pub fn package_root(flow_file: &Path) -> PathBuf {
    flow_file
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Reads and checks a flow. `root` is the package `self::` resolves against (by default the
/// flow file's folder, two levels up). Flow inputs given here are checked against
/// `inputs_def`.
pub fn load(path: &Path, root: Option<&Path>, given: &Map<String, Value>) -> Result<Flow, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| Problems(vec![format!("{}: {e}", path.display())]))?;
    let root = root.map_or_else(|| package_root(path), Path::to_path_buf);
    parse(&text, path, &root, given)
}

/// Checks flow YAML (see [`load`]).
pub fn parse(text: &str, path: &Path, root: &Path, given: &Map<String, Value>) -> Result<Flow, Problems> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| Problems(vec![format!("invalid YAML: {e}")]))?;
    let Value::Object(doc) = doc else { return Err(Problems(vec!["a flow must be a mapping".into()])) };
    let mut problems = Vec::new();
    let inputs = match parse_flow_inputs(doc.get("inputs_def")) {
        Ok(defs) => defs,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    for key in given.keys() {
        if !inputs.iter().any(|d| &d.handle == key) {
            let hint = hint(key, inputs.iter().map(|d| d.handle.as_str()));
            problems.push(format!("flow input {key:?}: the flow has no such input{hint}"));
        }
    }
    for def in &inputs {
        match given.get(&def.handle).or(def.value.as_ref()) {
            Some(v) => {
                if let Err(e) = def.check(v) {
                    problems.push(format!("flow input {:?}: {e}", def.handle));
                }
            }
            None if def.nullable => {}
            None => problems
                .push(format!("flow input {:?}: required, and not given (--input {}=...)", def.handle, def.handle)),
        }
    }
    let raw_nodes = match doc.get("nodes") {
        Some(Value::Array(nodes)) => nodes.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(Problems(vec!["nodes must be a list".into()])),
    };
    // Pass 1: ids, ignore, tasks.
    let mut seen = HashSet::new();
    let mut ignored = HashSet::new();
    let mut nodes: Vec<(Node, Map<String, Value>)> = Vec::new();
    for (i, raw) in raw_nodes.iter().enumerate() {
        let Value::Object(raw) = raw else {
            problems.push(format!("nodes[{i}]: must be a mapping"));
            continue;
        };
        let Some(id) = raw.get("node_id").and_then(Value::as_str).map(str::to_string) else {
            problems.push(format!("nodes[{i}]: no node_id"));
            continue;
        };
        if !seen.insert(id.clone()) {
            problems.push(format!("node {id}: duplicate node_id"));
            continue;
        }
        if raw.get("ignore").and_then(Value::as_bool).unwrap_or(false) {
            ignored.insert(id);
            continue;
        }
        let task = match (raw.get("task"), raw.get("values")) {
            (Some(task), _) => match resolve_task(task, root, path) {
                Ok(task) => task,
                Err(e) => {
                    problems.push(format!("node {id}: {e}"));
                    continue;
                }
            },
            (None, Some(values)) => Task::Values(value_node(values)),
            (None, None) => {
                let kind = ["subflow", "conditions", "service"].into_iter().find(|k| raw.contains_key(*k));
                problems.push(match kind {
                    Some(kind) => format!("node {id}: {kind} nodes are not supported by this runner"),
                    None => format!("node {id}: no task (a node needs `task:` or `values:`)"),
                });
                continue;
            }
        };
        let timeout = raw.get("timeout").and_then(Value::as_f64).filter(|t| *t > 0.0);
        let concurrency = raw.get("concurrency").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
        nodes.push((Node { id, task, inputs: BTreeMap::new(), timeout, concurrency }, raw.clone()));
    }
    // Pass 2: inputs, now that every node's outputs are known.
    let outputs_of: HashMap<String, Vec<String>> =
        nodes.iter().map(|(n, _)| (n.id.clone(), output_names(&n.task))).collect();
    for (node, raw) in &mut nodes {
        let entries = match raw.get("inputs_from") {
            Some(Value::Array(entries)) => entries.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                problems.push(format!("node {}: inputs_from must be a list", node.id));
                continue;
            }
        };
        let input_defs: Vec<HandleDef> = match &node.task {
            Task::Block { manifest, .. } => manifest.inputs.clone(),
            Task::Values(_) => Vec::new(),
        };
        // Handles whose entry was already reported (a broken connection): not "not listed" too.
        let mut reported: HashSet<String> = HashSet::new();
        for entry in entries {
            let problems_before = problems.len();
            let mut from_ignored = None;
            let Some(handle) = entry.get("handle").and_then(Value::as_str).map(str::to_string) else {
                problems.push(format!("node {}: an inputs_from entry has no handle", node.id));
                continue;
            };
            let Some(def) = input_defs.iter().find(|d| d.handle == handle) else {
                let hint = hint(&handle, input_defs.iter().map(|d| d.handle.as_str()));
                problems.push(format!("node {} input {handle:?}: the block has no such input{hint}", node.id));
                continue;
            };
            let mut links = Vec::new();
            for from in entry.get("from_node").and_then(Value::as_array).into_iter().flatten() {
                let (Some(src), Some(out)) =
                    (from.get("node_id").and_then(Value::as_str), from.get("output_handle").and_then(Value::as_str))
                else {
                    problems
                        .push(format!("node {} input {handle:?}: from_node needs node_id and output_handle", node.id));
                    continue;
                };
                if ignored.contains(src) {
                    from_ignored = Some(src.to_string());
                    continue;
                }
                match outputs_of.get(src) {
                    None => {
                        let hint = hint(src, outputs_of.keys().map(String::as_str));
                        problems.push(format!("node {} input {handle:?}: no node {src:?}{hint}", node.id));
                    }
                    Some(outs) if !outs.iter().any(|o| o == out) => {
                        let hint = hint(out, outs.iter().map(String::as_str));
                        problems
                            .push(format!("node {} input {handle:?}: node {src} has no output {out:?}{hint}", node.id));
                    }
                    Some(_) => links.push((src.to_string(), out.to_string())),
                }
            }
            let mut flow_links = Vec::new();
            for from in entry.get("from_flow").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = from.get("input_handle").and_then(Value::as_str) else { continue };
                if inputs.iter().any(|d| d.handle == name) {
                    flow_links.push(name.to_string());
                } else {
                    let hint = hint(name, inputs.iter().map(|d| d.handle.as_str()));
                    problems.push(format!("node {} input {handle:?}: the flow has no input {name:?}{hint}", node.id));
                }
            }
            // A connection beats a value.
            let source = if !links.is_empty() {
                Source::Nodes(links)
            } else if !flow_links.is_empty() {
                Source::Flow(flow_links)
            } else if let Some(value) = entry.get("value") {
                if let Err(e) = def.check(value) {
                    problems.push(format!("node {} input {handle:?}: {e}", node.id));
                }
                Source::Value(value.clone())
            } else {
                if let Some(src) = from_ignored {
                    problems.push(format!(
                        "node {} input {handle:?}: its only source, node {src}, is ignored (`ignore: true`), \
                         so this node could never run",
                        node.id
                    ));
                }
                if problems.len() > problems_before {
                    reported.insert(handle);
                }
                continue;
            };
            node.inputs.insert(handle, source);
        }
        // OOMOL's engine runs a node only when every input handle of its block is listed with
        // a value (a bare `value:` is null) or a connection, whatever the manifest's default:
        // a handle left out skips the node silently there, so it is a problem here.
        for def in &input_defs {
            if !node.inputs.contains_key(&def.handle) && !reported.contains(&def.handle) {
                problems.push(format!(
                    "node {} input {:?}: not listed in inputs_from, so OOMOL's engine would skip this node \
                     (list it with a value, a bare `value:` for null, or a connection)",
                    node.id, def.handle
                ));
            }
        }
    }
    let nodes: Vec<Node> = nodes.into_iter().map(|(n, _)| n).collect();
    if let Some(cycle) = find_cycle(&nodes) {
        problems.push(format!("cycle: {}", cycle.join(" -> ")));
    }
    let mut outputs = Vec::new();
    for entry in doc.get("outputs_from").and_then(Value::as_array).into_iter().flatten() {
        let Some(handle) = entry.get("handle").and_then(Value::as_str) else { continue };
        let mut links = Vec::new();
        for from in entry.get("from_node").and_then(Value::as_array).into_iter().flatten() {
            let (Some(src), Some(out)) =
                (from.get("node_id").and_then(Value::as_str), from.get("output_handle").and_then(Value::as_str))
            else {
                continue;
            };
            match outputs_of.get(src) {
                Some(outs) if outs.iter().any(|o| o == out) => links.push((src.to_string(), out.to_string())),
                Some(outs) => {
                    let hint = hint(out, outs.iter().map(String::as_str));
                    problems.push(format!("flow output {handle:?}: node {src} has no output {out:?}{hint}"));
                }
                None => problems.push(format!("flow output {handle:?}: no node {src:?}")),
            }
        }
        outputs.push((handle.to_string(), links));
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(Flow {
        path: path.to_path_buf(),
        title: doc.get("title").and_then(Value::as_str).map(str::to_string),
        nodes,
        inputs,
        outputs,
    })
}

fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates).map(|h| format!(" (did you mean {h:?}?)")).unwrap_or_default()
}

fn parse_flow_inputs(section: Option<&Value>) -> Result<Vec<HandleDef>, String> {
    handles(section, "inputs_def").map_err(|e| format!("inputs_def: {e}"))
}

fn value_node(values: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for item in values.as_array().into_iter().flatten() {
        if let Some(handle) = item.get("handle").and_then(Value::as_str) {
            out.insert(handle.to_string(), item.get("value").cloned().unwrap_or(Value::Null));
        }
    }
    out
}

fn output_names(task: &Task) -> Vec<String> {
    match task {
        Task::Block { manifest, .. } => manifest.outputs.iter().map(|h| h.handle.clone()).collect(),
        Task::Values(values) => values.keys().cloned().collect(),
    }
}

/// Resolves `self::X`, `./rel` or an absolute path to one of our blocks.
fn resolve_task(task: &Value, root: &Path, flow_file: &Path) -> Result<Task, String> {
    let Some(reference) = task.as_str() else {
        return Err("inline task blocks are not supported; put the block in blocks/<name>/block.oo.yaml".into());
    };
    let file = if let Some(name) = reference.strip_prefix("self::") {
        let candidates = [
            root.join("blocks").join(name).join("block.oo.yaml"),
            root.join("blocks").join(name).join("block.oo.yml"),
            root.join("tasks").join(name).join("task.oo.yaml"),
            root.join("tasks").join(name).join("task.oo.yml"),
        ];
        match candidates.iter().find(|c| c.is_file()) {
            Some(file) => file.clone(),
            None => {
                let known: Vec<&str> = crate::BLOCKS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown block {reference:?}: no blocks/{name}/block.oo.yaml under {}{}",
                    root.display(),
                    hint(name, known)
                ));
            }
        }
    } else if reference.contains("::") {
        return Err(format!(
            "unknown block {reference:?}: only self:: and paths are resolved (no package dependencies)"
        ));
    } else {
        let base = flow_file.parent().unwrap_or(Path::new("."));
        let path = base.join(reference);
        if path.is_dir() {
            ["block.oo.yaml", "task.oo.yaml"].iter().map(|f| path.join(f)).find(|f| f.is_file()).unwrap_or(path)
        } else {
            path
        }
    };
    let manifest = Manifest::load(&file)?;
    // Our blocks name themselves in their executor; that is what runs in-process.
    let args = manifest.executor["options"]["args"].as_array().cloned().unwrap_or_default();
    let name = match args.as_slice() {
        [Value::String(cmd), Value::String(name)] if cmd == "block" && crate::is_block(name) => name.clone(),
        _ => {
            return Err(format!(
            "block {reference:?} ({}) has executor {}, which this runner cannot execute (only script-runner blocks)",
            file.display(),
            manifest.executor
        ))
        }
    };
    Ok(Task::Block { name, manifest })
}

fn find_cycle(nodes: &[Node]) -> Option<Vec<String>> {
    let edges: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| {
            let deps = n
                .inputs
                .values()
                .filter_map(|s| match s {
                    Source::Nodes(links) => Some(links.iter().map(|(src, _)| src.as_str()).collect::<Vec<_>>()),
                    _ => None,
                })
                .flatten()
                .collect();
            (n.id.as_str(), deps)
        })
        .collect();
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        id: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(id, 1);
        stack.push(id);
        for dep in edges.get(id).into_iter().flatten() {
            match state.get(dep).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == dep).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().rev().map(|s| s.to_string()).collect();
                    cycle.push(dep.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(dep, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(id, 2);
        None
    }
    for n in nodes {
        if state.get(n.id.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(&n.id, &edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems of a flow over the shipped blocks.
    fn problems(yaml: &str) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
        match parse(yaml, Path::new("flows/t/flow.oo.yaml"), &root, &Map::new()) {
            Ok(_) => Vec::new(),
            Err(Problems(p)) => p,
        }
    }

    const STATUS_NODE: &str = "
  - node_id: s
    task: self::get-job-status
    inputs_from:
      - handle: script_runner_url
        value: http://127.0.0.1:1
      - handle: token
        value:
";

    #[test]
    fn a_broken_connection_is_reported_once_not_also_as_not_listed() {
        let yaml = format!(
            "nodes:{STATUS_NODE}      - handle: job_id\n        from_node:\n          - node_id: nobody\n            output_handle: job_id\n"
        );
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("no node \"nobody\""), "{found:?}");
    }

    #[test]
    fn a_handle_fed_only_by_an_ignored_node_says_so() {
        let yaml = format!(
            "nodes:\n  - node_id: gone\n    ignore: true\n    values:\n      - handle: id\n        value: x\n{STATUS_NODE}      - handle: job_id\n        from_node:\n          - node_id: gone\n            output_handle: id\n"
        );
        let found = problems(&yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("its only source, node gone, is ignored"), "{found:?}");
    }

    #[test]
    fn a_handle_left_out_names_oomol() {
        let found = problems(&format!("nodes:{STATUS_NODE}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("node s input \"job_id\": not listed in inputs_from"), "{found:?}");
        assert!(found[0].contains("OOMOL's engine would skip this node"), "{found:?}");
    }
}
