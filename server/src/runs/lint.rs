//! The launch-time label lint: a literal step label inside a loop is almost always a bug.
//!
//! Labels are durability keys, so `for f in *; do script-runner step review -- ...; done`
//! journals the first iteration and replays its result for every later one. The lint finds the
//! obvious cases in shell (`for`/`while`/`until` ... `do` ... `done`), Python (an indented
//! block under `for`/`while`) and brace languages (`for (...) {` ... `}`), for labels given to
//! the `script-runner step` command or to a client call such as `step("review", ...)`. A label
//! that interpolates anything (`review-$f`, `f"review-{i}"`, `` `review-${i}` ``) is fine.

use std::sync::OnceLock;

use regex::Regex;

/// One literal label found inside a loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1-based source line.
    pub line: usize,
    /// The literal label.
    pub label: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: step label \"{}\" is a literal inside a loop, so every iteration would replay the \
             first one's result; put the item in the label (e.g. \"{}-$item\")",
            self.line, self.label, self.label
        )
    }
}

fn cli_label() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // `script-runner step [--progress N/M msg] <label>`: the first word after `step` that is
        // not an option.
        Regex::new(r#"script-runner\s+step\s+(?:--progress\s+\S+\s+(?:"[^"]*"|'[^']*'|\S+)\s+)?(["']?)([^\s"'$`{}()]+)(["']?)(?:\s|$|;)"#)
            .expect("static regex")
    })
}

fn call_label() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A client call whose first argument is a plain string literal (no f-string prefix).
        Regex::new(r#"(?:^|[^\w])(?:step|command|script|value|sleep|approval)\(\s*(["'])([^"'$`{}]*)(["'])"#)
            .expect("static regex")
    })
}

fn loop_start() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^\s*(?:for|while|until)\b").expect("static regex"))
}

/// Every literal label inside a loop, in source order.
pub fn lint(source: &str) -> Vec<Violation> {
    let mut found = Vec::new();
    // Shell: open `do` blocks. Python: indentation of the open loop headers. Braces: depth at
    // which each open brace loop started.
    let mut shell_depth = 0usize;
    let mut python_loops: Vec<usize> = Vec::new();
    let mut brace_depth = 0usize;
    let mut brace_loops: Vec<usize> = Vec::new();
    let mut pending_brace_loop = false;
    for (index, raw) in source.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        while python_loops.last().is_some_and(|&i| indent <= i) {
            python_loops.pop();
        }
        let in_loop = shell_depth > 0 || !python_loops.is_empty() || !brace_loops.is_empty();
        let header = loop_start().is_match(line);
        if in_loop || (header && words(line).any(|w| w == "do")) {
            for label in labels(line) {
                found.push(Violation { line: index + 1, label });
            }
        }
        // Update the loop state with this line.
        for word in words(line) {
            match word {
                "do" => shell_depth += 1,
                "done" => shell_depth = shell_depth.saturating_sub(1),
                _ => {}
            }
        }
        if header && line.trim_end().ends_with(':') {
            python_loops.push(indent);
        }
        if header && !line.contains(" do") && !line.trim_end().ends_with(':') {
            pending_brace_loop = true;
        }
        for c in line.chars() {
            match c {
                '{' => {
                    if pending_brace_loop {
                        brace_loops.push(brace_depth);
                        pending_brace_loop = false;
                    }
                    brace_depth += 1;
                }
                '}' => {
                    brace_depth = brace_depth.saturating_sub(1);
                    if brace_loops.last().is_some_and(|&d| d == brace_depth) {
                        brace_loops.pop();
                    }
                }
                _ => {}
            }
        }
    }
    found
}

fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || c == ';').filter(|w| !w.is_empty())
}

/// The line without a trailing `#` or `//` comment (a `#` inside a word, like `$#`, stays).
fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with("//") {
        return "";
    }
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn labels(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for caps in cli_label().captures_iter(line) {
        let (open, label, close) = (&caps[1], &caps[2], &caps[3]);
        if open == close && !label.starts_with('-') {
            out.push(label.to_string());
        }
    }
    for caps in call_label().captures_iter(line) {
        if caps[1] == caps[3] && !caps[2].is_empty() {
            out.push(caps[2].to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_loop_with_literal_label() {
        let src = "#!/bin/bash\nfor f in a b; do\n  script-runner step review -- echo \"$f\"\ndone\n";
        assert_eq!(lint(src), vec![Violation { line: 3, label: "review".into() }]);
    }

    #[test]
    fn shell_one_line_loop() {
        let src = "for f in a b; do script-runner step review -- true; done\n";
        assert_eq!(lint(src).len(), 1);
    }

    #[test]
    fn interpolated_labels_and_steps_outside_loops_pass() {
        let src = "script-runner step first -- true\nfor f in a b; do\n  script-runner step \"review-$f\" -- true\n  script-runner step review-${f} -- true\ndone\nscript-runner step last -- true\n";
        assert_eq!(lint(src), vec![]);
    }

    #[test]
    fn python_and_brace_loops() {
        let py = "for i in range(3):\n    wf.step(\"fetch\", lambda: i)\nwf.step(\"after\", lambda: 1)\n";
        assert_eq!(lint(py), vec![Violation { line: 2, label: "fetch".into() }]);
        let py_ok = "for i in range(3):\n    wf.step(f\"fetch-{i}\", lambda: i)\n";
        assert_eq!(lint(py_ok), vec![]);
        let rs = "for i in 0..3 {\n    wf.command(\"build\", &[\"true\"])?;\n}\nwf.command(\"ship\", &[\"true\"])?;\n";
        assert_eq!(lint(rs), vec![Violation { line: 2, label: "build".into() }]);
    }

    #[test]
    fn while_loops_and_comments() {
        let src = "# script-runner step review -- true\nwhile read -r line; do\n  # a comment\n  script-runner step --progress 1/2 \"x\" review -- true\ndone\n";
        assert_eq!(lint(src), vec![Violation { line: 4, label: "review".into() }]);
    }
}
