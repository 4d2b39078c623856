//! A request's `args`, checked against its script's rules with upstream's messages (the
//! workflow engine checks a script step's args with the same rules).

use serde_json::Value;

use super::JobError;
use crate::config::ArgRules;

/// Checks a request's `args` against the script's rules, with upstream's messages.
pub fn validate_args(rules: &ArgRules, args: Option<&Value>) -> Result<Vec<String>, JobError> {
    let invalid = |m: String| JobError::InvalidArgs(m);
    let items = match args {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("args must be an array of strings".into())),
    };
    if items.len() > rules.max_items {
        return Err(invalid(format!("too many args: max {}", rules.max_items)));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::String(s) = item else { return Err(invalid(format!("arg[{i}] must be string"))) };
        if s.chars().count() > rules.item_max_length {
            return Err(invalid(format!("arg[{i}] too long: max {}", rules.item_max_length)));
        }
        if s.contains('\0') {
            return Err(invalid(format!("arg[{i}] must not contain a NUL character")));
        }
        if !rules.item_pattern.is_match(s) {
            return Err(invalid(format!("arg[{i}] does not match pattern")));
        }
        out.push(s.clone());
    }
    Ok(out)
}
