//! OOMOL block manifests (`block.oo.yaml` / `task.oo.yaml`): handles, defaults and schemas.
//!
//! The manifest is the single source of truth of a block's handles: the block runtime fills
//! defaults and checks values with it, and the flow runner checks wiring with it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// One input or output handle.
#[derive(Debug, Clone)]
pub struct HandleDef {
    /// The handle name (compared exactly, case included).
    pub handle: String,
    /// The JSON Schema values must match (`None`: anything).
    pub json_schema: Option<Value>,
    /// The default: `None` without a `value` key, `Some(Value::Null)` for a bare `value:`.
    pub value: Option<Value>,
    /// Whether null is accepted.
    pub nullable: bool,
    /// Free text.
    pub description: Option<String>,
    /// `json_schema` compiled on the first [`HandleDef::check`] (clones share it).
    validator: OnceLock<Result<Arc<jsonschema::Validator>, String>>,
}

impl HandleDef {
    /// Checks a value against the handle's schema; null passes when the handle is nullable or
    /// its default is null.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if value.is_null() && (self.nullable || self.value == Some(Value::Null)) {
            return Ok(());
        }
        let Some(schema) = &self.json_schema else { return Ok(()) };
        if schema.as_object().is_some_and(Map::is_empty) {
            return Ok(());
        }
        let validator = self
            .validator
            .get_or_init(|| {
                jsonschema::validator_for(schema).map(Arc::new).map_err(|e| format!("invalid json_schema: {e}"))
            })
            .as_ref()
            .map_err(String::clone)?;
        let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{value} does not match the schema {schema}: {}", errors.join("; ")))
        }
    }
}

/// A parsed block manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Shown by editors.
    pub title: Option<String>,
    /// Shown by editors.
    pub description: Option<String>,
    /// Inputs, in file order.
    pub inputs: Vec<HandleDef>,
    /// Outputs, in file order.
    pub outputs: Vec<HandleDef>,
    /// The `executor` section, as written.
    pub executor: Value,
}

impl Manifest {
    /// Parses manifest YAML.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        let Value::Object(doc) = doc else { return Err("a block manifest must be a mapping".into()) };
        let text_of = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_string);
        Ok(Manifest {
            title: text_of("title"),
            description: text_of("description"),
            inputs: handles(doc.get("inputs_def"), "inputs_def")?,
            outputs: handles(doc.get("outputs_def"), "outputs_def")?,
            executor: doc.get("executor").cloned().unwrap_or(Value::Null),
        })
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Manifest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The input handle with this name.
    pub fn input(&self, name: &str) -> Option<&HandleDef> {
        self.inputs.iter().find(|h| h.handle == name)
    }

    /// The output handle with this name.
    pub fn output(&self, name: &str) -> Option<&HandleDef> {
        self.outputs.iter().find(|h| h.handle == name)
    }
}

/// The handles of an `inputs_def` / `outputs_def` section (`key` names it in errors).
pub(crate) fn handles(section: Option<&Value>, key: &str) -> Result<Vec<HandleDef>, String> {
    let items = match section {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("{key} must be a list")),
    };
    let mut out: Vec<HandleDef> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(def) = item else { return Err(format!("{key}[{i}] must be a mapping")) };
        let Some(handle) = def.get("handle").and_then(Value::as_str) else {
            return Err(format!("{key}[{i}] has no handle name"));
        };
        if out.iter().any(|h| h.handle == handle) {
            return Err(format!("{key}: handle {handle:?} is defined twice"));
        }
        out.push(HandleDef {
            handle: handle.to_string(),
            json_schema: def.get("json_schema").cloned().filter(|s| !s.is_null()),
            value: def.get("value").cloned(),
            nullable: def.get("nullable").and_then(Value::as_bool).unwrap_or(false),
            description: def.get("description").and_then(Value::as_str).map(str::to_string),
            validator: OnceLock::new(),
        });
    }
    Ok(out)
}

/// The closest of `candidates` to `name`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (handle names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cost = usize::from(ca != b[j]);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_value_is_an_explicit_null() {
        let m = Manifest::parse(
            "inputs_def:\n  - handle: a\n    value:\n  - handle: b\n    json_schema: {type: string}\noutputs_def: []\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.inputs[0].value, Some(Value::Null));
        assert_eq!(m.inputs[1].value, None);
        assert!(m.inputs[1].check(&Value::from(1)).is_err());
        assert!(m.inputs[1].check(&Value::from("x")).is_ok());
    }

    #[test]
    fn typo_hints() {
        assert_eq!(did_you_mean("jobid", ["job_id", "stream"]), Some("job_id"));
        assert_eq!(did_you_mean("Script_ID", ["script_id", "args"]), Some("script_id"));
        assert_eq!(did_you_mean("zzz", ["job_id"]), None);
    }
}
