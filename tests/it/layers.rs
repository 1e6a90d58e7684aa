//! The module graph the house style asks for (issue 20, item 16): the
//! executor does not know the engine, `config` is imported by `executor`
//! and `redact` but imports neither back, `domain` uses nothing of ours,
//! and the cache-lookup rule lives in `domain::cache` alone.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// The lines of code (not comments) of the files under `rel` that use
/// `needle`, as `file:line: text`.
fn uses(rel: &str, needle: &str) -> Vec<String> {
    let root = src(rel);
    let files = if root.is_dir() { sources(&root) } else { vec![root] };
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.contains(needle) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    found
}

#[test]
fn the_executor_does_not_import_the_engine() {
    assert_eq!(uses("executor", "crate::engine"), Vec::<String>::new());
    assert_eq!(uses("executor", "engine::"), Vec::<String>::new());
}

#[test]
fn config_imports_neither_the_executor_nor_is_imported_by_redact() {
    assert_eq!(uses("config.rs", "crate::executor"), Vec::<String>::new());
    assert_eq!(uses("redact.rs", "crate::config"), Vec::<String>::new());
}

#[test]
fn domain_uses_nothing_of_ours() {
    for layer in [
        "api", "worker", "executor", "engine", "store", "content", "config", "app",
    ] {
        assert_eq!(uses("domain", &format!("crate::{layer}")), Vec::<String>::new());
    }
}

#[test]
fn the_cache_lookup_rule_lives_in_domain_alone() {
    // The plan and the worker ask `domain::cache::CacheRule`; neither
    // compares cache modes or selections itself.
    for needle in ["cache_mode ==", "CacheMode::Use =>", "let looks_up =", "bypass_cache"] {
        for layer in ["engine", "executor", "store", "worker"] {
            assert_eq!(uses(layer, needle), Vec::<String>::new(), "{needle} in {layer}");
        }
    }
    assert!(!uses("engine/plan.rs", "CacheRule").is_empty());
    assert!(!uses("engine/plan_iterations.rs", "CacheRule").is_empty());
    assert!(!uses("executor/cache.rs", "CacheRule").is_empty());
}
