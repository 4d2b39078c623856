//! The launch-time label lint: a literal step label inside a loop is almost always a bug.
//!
//! Labels are durability keys, so `for f in *; do script-runner step review -- ...; done`
//! journals the first iteration and replays its result for every later one. The lint finds the
//! obvious cases in shell (`for`/`while`/`until` ... `do` ... `done`), Python (an indented
//! block under `for`/`while`) and brace languages (`for (...) {` ... `}`, a one-line
//! `for (...) stmt;`, and JavaScript's `.map(`/`.forEach(`/`.flatMap(` callbacks), for labels
//! given to the `script-runner step` command or to a client or SDK call such as
//! `step("review", ...)`, `ctx.step.run("review", ...)` or `@step("review")`. A label that
//! interpolates anything (`review-$f`, `f"review-{i}"`, `` `review-${i}` ``) is fine.

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
        // A client or SDK call whose first argument is a plain string literal (no f-string
        // prefix, no template interpolation).
        Regex::new(
            r#"(?:^|[^\w])(?:step|run|command|script|scriptStart|script_start|value|sleep|approval|input|waitEvent|wait_event)\(\s*(["'`])([^"'`$\\{}]*)(["'`])"#,
        )
            .expect("static regex")
    })
}

fn loop_start() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^\s*(?:for|while|until)\b").expect("static regex"))
}

/// A JavaScript callback run once per item: `items.map((item) => ...`.
fn callback_loop() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\.(?:map|forEach|flatMap)\s*\(\s*(?:async\s*)?(?:function\b|\(?[\w\s,{}\[\]:]*\)?\s*=>)")
            .expect("static regex")
    })
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
        let python_header = header && line.trim_end().ends_with(':');
        let callback = callback_loop().find(line);
        // A loop header runs its condition (and, on one line, its body) every iteration; a
        // Python header's iterable is evaluated once.
        let checked =
            if in_loop || (header && !python_header) { Some(line) } else { callback.map(|m| &line[m.start()..]) };
        if let Some(text) = checked {
            for label in labels(text) {
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
        if python_header {
            python_loops.push(indent);
        }
        // A brace loop's body starts at the next `{`, unless the whole loop is this line
        // (`for (...) stmt;`); a callback loop's, at a `{` after `.map(`.
        let one_line = line.trim_end().ends_with(';') && !line.contains('{');
        if (header && !line.contains(" do") && !python_header && !one_line)
            || callback.is_some_and(|m| line[m.start()..].contains('{'))
        {
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
    fn typescript_sdk_calls_in_loops() {
        let ts = "export default async function main(args, ctx) {\n  for (const claim of args.claims) {\n    await ctx.step.run(\"verify\", () => check(claim));\n  }\n  await ctx.step.run(\"after\", () => 1);\n}\n";
        assert_eq!(lint(ts), vec![Violation { line: 3, label: "verify".into() }]);
        let template = "for (let pass = 1; pass <= 3; pass++) {\n  await ctx.step.script(`revise-${pass}`, \"revise\", []);\n  await ctx.step.waitEvent(`plain`, \"go\");\n}\n";
        assert_eq!(lint(template), vec![Violation { line: 3, label: "plain".into() }]);
        let one_line =
            "for (const c of cs) await ctx.step.value('v', c);\nwhile (!(await ctx.step.run(\"poll\", probe))) {}\n";
        assert_eq!(lint(one_line).iter().map(|v| v.line).collect::<Vec<_>>(), [1, 2]);
        let callbacks = "await Promise.all(items.map((item) => ctx.step.run(\"fetch\", () => get(item))));\nitems.forEach(async (item) => {\n  await ctx.step.input(\"ask\", \"?\");\n});\nawait ctx.step.run(\"done\", f);\n";
        assert_eq!(lint(callbacks).iter().map(|v| v.line).collect::<Vec<_>>(), [1, 3]);
        let fine = "await Promise.all(items.map((item, i) => ctx.step.run(`fetch-${i}`, () => get(item))));\nconst r = await ctx.step.run(\"once\", () => xs.map((x) => x * 2));\nfor (const x of xs) total += x;\nif (r) {\n  await ctx.step.run(\"after\", f);\n}\n";
        assert_eq!(lint(fine), vec![]);
    }

    #[test]
    fn python_sdk_calls_and_decorators_in_loops() {
        let py = "def main(args, ctx):\n    for claim in args[\"claims\"]:\n        ctx.step.run(\"verify\", lambda: claim)\n        @ctx.step(\"decorated\")\n        def f():\n            return 1\n    ctx.step.wait_event(\"go\", \"go\")\n    for i in ctx.step.value(\"items\", [1, 2]):\n        ctx.step.run(f\"item-{i}\", lambda: i)\n";
        assert_eq!(
            lint(py),
            vec![Violation { line: 3, label: "verify".into() }, Violation { line: 4, label: "decorated".into() }]
        );
    }

    #[test]
    fn while_loops_and_comments() {
        let src = "# script-runner step review -- true\nwhile read -r line; do\n  # a comment\n  script-runner step --progress 1/2 \"x\" review -- true\ndone\n";
        assert_eq!(lint(src), vec![Violation { line: 4, label: "review".into() }]);
    }
}
