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
//!
//! This file holds the types of a checked flow and the module's public face; [`load`] and
//! [`parse()`] (in `parse.rs`) read and check a flow, [`run()`] and [`execute`] (in `run.rs`) run it.

mod parse;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::manifest::{HandleDef, Manifest};

pub use parse::{load, package_root, parse};
pub use run::{execute, run, Finished, Journal, NoJournal};

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
