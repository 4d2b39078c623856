//! Loading, parsing and checking a flow: everything that happens before a node runs.
//!
//! [`parse`] reads the YAML in two passes (node ids and tasks, then each node's inputs once every
//! node's outputs are known), resolves each `task:` to one of our blocks (`resolve_task`) and
//! looks for a cycle (`find_cycle`). It collects every problem instead of stopping at the first,
//! so one run of the checker reports them all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Flow, Node, Problems, Source, Task};
use crate::manifest::{did_you_mean, handles, HandleDef, Manifest};

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
