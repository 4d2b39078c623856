//! Workflow sources written for a step SDK (`sdk/typescript`, `sdk/python`): a source that
//! defines `main(args, ctx)` run with `node`, `tsx`, `deno` or `python3` is started through its
//! SDK's loader, which imports it, calls `main` and writes its return value as the run's output.
//!
//! The SDKs' files are built into the server (so an installed binary needs no checkout beside
//! it) and written once per server start into `<logsDir>/runs/.sdk/<version>/`, a folder named
//! by the hash of their contents: servers of two versions sharing a `logsDir` never overwrite
//! each other's loader under a running workflow.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use regex::Regex;

/// The language of a source run by a step SDK's loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// JavaScript (`node`): the source is written as `source.mjs`.
    JavaScript,
    /// TypeScript (`tsx`, `deno`, `node --experimental-strip-types`): `source.ts`.
    TypeScript,
    /// Python (`python3`): `source.py`.
    Python,
}

impl Language {
    /// The extension the run's copy of the source is written with (the loaders and the
    /// runtimes tell ESM, TypeScript and Python apart by it).
    pub fn extension(self) -> &'static str {
        match self {
            Language::JavaScript => "mjs",
            Language::TypeScript => "ts",
            Language::Python => "py",
        }
    }

    /// The loader's path inside the SDK folder.
    fn loader(self) -> &'static str {
        match self {
            Language::JavaScript | Language::TypeScript => "typescript/loader.mjs",
            Language::Python => "python/script_runner/loader.py",
        }
    }
}

/// The SDK files the loaders need, relative to the SDK folder (the type declarations, tests
/// and packaging files are not needed to run a workflow).
const FILES: &[(&str, &str)] = &[
    ("typescript/package.json", include_str!("../../../sdk/typescript/package.json")),
    ("typescript/index.mjs", include_str!("../../../sdk/typescript/index.mjs")),
    ("typescript/loader.mjs", include_str!("../../../sdk/typescript/loader.mjs")),
    ("python/script_runner/__init__.py", include_str!("../../../sdk/python/script_runner/__init__.py")),
    ("python/script_runner/client.py", include_str!("../../../sdk/python/script_runner/client.py")),
    ("python/script_runner/errors.py", include_str!("../../../sdk/python/script_runner/errors.py")),
    ("python/script_runner/loader.py", include_str!("../../../sdk/python/script_runner/loader.py")),
    ("python/script_runner/py.typed", include_str!("../../../sdk/python/script_runner/py.typed")),
];

/// Which SDK runs `source` under the interpreter `argv`, if any: the interpreter must be one
/// the SDKs support (by its program's name, or the first argument of `/usr/bin/env`) and the
/// source must define `main` in that language. Anything else runs as it always did.
pub fn language(argv: &[String], source: &str) -> Option<Language> {
    let mut words = argv.iter().map(String::as_str);
    let mut program = base_name(words.next()?);
    if program == "env" {
        program = base_name(words.find(|w| !w.starts_with('-') && !w.contains('='))?);
    }
    let strips_types = argv.iter().any(|a| a == "--experimental-strip-types" || a == "--experimental-transform-types");
    let language = match program {
        "node" | "nodejs" if strips_types => Language::TypeScript,
        "node" | "nodejs" => Language::JavaScript,
        "tsx" | "ts-node" | "deno" | "bun" => Language::TypeScript,
        p if p == "python" || p.starts_with("python3") => Language::Python,
        _ => return None,
    };
    defines_main(language, source).then_some(language)
}

/// Whether the source defines the entry point its loader calls.
fn defines_main(language: Language, source: &str) -> bool {
    static JS: OnceLock<Regex> = OnceLock::new();
    static PY: OnceLock<Regex> = OnceLock::new();
    let re = match language {
        Language::JavaScript | Language::TypeScript => JS.get_or_init(|| {
            Regex::new(r"(?m)^\s*export\s+(?:default\s+(?:async\s+)?function\b|(?:async\s+)?function\s+main\s*[(<]|default\s+main\b)")
                .expect("static regex")
        }),
        Language::Python => {
            PY.get_or_init(|| Regex::new(r"(?m)^(?:async\s+)?def\s+main\s*\(").expect("static regex"))
        }
    };
    re.is_match(source)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The argv that runs `source_file` through its SDK's loader: the interpreter's own argv, the
/// loader, the source.
pub fn loader_argv(sdk_dir: &Path, language: Language, interpreter: &[String], source_file: &Path) -> Vec<String> {
    let mut argv = interpreter.to_vec();
    argv.push(sdk_dir.join(language.loader()).display().to_string());
    argv.push(source_file.display().to_string());
    argv
}

/// The SDK folder under `runs_dir`, written on first use (by this process) and reused after.
/// Executions starting at once wait for one writer: each would otherwise write the same files.
pub fn install(runs_dir: &Path) -> std::io::Result<PathBuf> {
    static INSTALLED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = installed.as_ref() {
        if dir.starts_with(runs_dir) && dir.join(Language::Python.loader()).is_file() {
            return Ok(dir.clone());
        }
    }
    let dir = runs_dir.join(".sdk").join(version());
    if !complete(&dir) {
        // Written beside, then renamed into place: a loader is never seen half-written (by
        // this server or another one sharing the folder).
        let partial = runs_dir.join(".sdk").join(format!("{}.{}.partial", version(), std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        for (name, text) in FILES {
            let path = partial.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)?;
        }
        // A stale incomplete copy (a crash mid-way of an older server) makes way.
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if let Err(e) = std::fs::rename(&partial, &dir) {
            let _ = std::fs::remove_dir_all(&partial);
            // Another server wrote it meanwhile.
            if !complete(&dir) {
                return Err(e);
            }
        }
    }
    *installed = Some(dir.clone());
    Ok(dir)
}

/// Whether `dir` holds every SDK file as built in.
fn complete(dir: &Path) -> bool {
    FILES.iter().all(|(name, text)| std::fs::read(dir.join(name)).is_ok_and(|b| b == text.as_bytes()))
}

/// A short hash of the built-in SDK files.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut all = Vec::new();
        for (name, text) in FILES {
            all.extend_from_slice(name.as_bytes());
            all.push(0);
            all.extend_from_slice(text.as_bytes());
            all.push(0);
        }
        super::launch::sha256_hex(&all)[..16].to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_string()).collect()
    }

    #[test]
    fn a_main_run_by_a_known_interpreter_is_an_sdk_source() {
        let js = "import x from 'y';\nexport default async function main(args, ctx) {\n  return 1;\n}\n";
        assert_eq!(language(&argv(&["/usr/bin/node"]), js), Some(Language::JavaScript));
        assert_eq!(language(&argv(&["/usr/bin/env", "node"]), js), Some(Language::JavaScript));
        assert_eq!(language(&argv(&["/opt/tsx/bin/tsx"]), js), Some(Language::TypeScript));
        assert_eq!(language(&argv(&["/usr/bin/node", "--experimental-strip-types"]), js), Some(Language::TypeScript));
        let ts = "export async function main(args: Args, ctx: Context): Promise<Out> {}";
        assert_eq!(language(&argv(&["/usr/local/bin/deno", "run", "-A"]), ts), Some(Language::TypeScript));
        let py = "import json\n\ndef main(args, ctx):\n    return {}\n";
        assert_eq!(language(&argv(&["/usr/bin/python3"]), py), Some(Language::Python));
        assert_eq!(language(&argv(&["/usr/bin/env", "-S", "python3.11"]), py), Some(Language::Python));
    }

    #[test]
    fn other_sources_and_interpreters_run_as_before() {
        // A plain node script (no main), a Python main run by bash, a nested def main.
        assert_eq!(language(&argv(&["/usr/bin/node"]), "console.log(1)\n"), None);
        assert_eq!(language(&argv(&["/bin/bash"]), "def main(args, ctx):\n  pass\n"), None);
        assert_eq!(language(&argv(&["/usr/bin/python3"]), "class A:\n    def main(self, ctx):\n        pass\n"), None);
        assert_eq!(language(&argv(&["/usr/bin/python3"]), "export default async function main() {}"), None);
        assert_eq!(language(&[], "def main(args, ctx): pass"), None);
    }

    #[test]
    fn executions_starting_at_once_all_get_the_complete_sdk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || install(&root).map(|sdk| complete(&sdk)))
            })
            .collect();
        for t in threads {
            assert!(matches!(t.join().expect("thread"), Ok(true)));
        }
    }

    #[test]
    fn the_sdk_is_written_once_and_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sdk = install(dir.path()).expect("install");
        assert!(sdk.starts_with(dir.path().join(".sdk")));
        for (name, text) in FILES {
            assert_eq!(std::fs::read_to_string(sdk.join(name)).expect("file"), *text);
        }
        assert_eq!(install(dir.path()).expect("again"), sdk);
        let argv = loader_argv(&sdk, Language::Python, &argv(&["/usr/bin/python3"]), Path::new("/r/source.py"));
        assert_eq!(argv[1], sdk.join("python/script_runner/loader.py").display().to_string());
        assert_eq!(argv[2], "/r/source.py");
    }
}
