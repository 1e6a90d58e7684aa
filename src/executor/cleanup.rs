//! The Cleanup step: removes the artifacts directories of the steps it
//! names (for a ForEach, of its iterations' steps), of this execution only. A step that took its outputs from
//! another execution (reused by a selective execution or by early cut-off,
//! or a cache hit) refers to that execution's artifacts: they are kept, and
//! the step's metadata says so. Removing what is already gone is fine (an
//! attempt retried after a crash finds part of its work done), and the
//! cache and selective reuse never offer a run whose artifacts are gone
//! (`content::artifacts::missing`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::StepContext;
use crate::{domain::definition::cleanup_targets, domain::outcome::StepOutcome, store::cleanup};

pub const CLEANUP_FAILED: &str = "Cleanup.FAILED";

pub async fn run(ctx: &StepContext<'_>, arguments: &Value) -> StepOutcome {
    let step = ctx.step;
    let names = cleanup_targets(arguments);
    let sources = match cleanup::sources(ctx.db, step.execution_id, &names).await {
        Ok(s) => s,
        Err(e) => {
            return StepOutcome::failed(
                "Step.SERVICE_FAULT",
                format!("reading the steps to clean up failed: {e}"),
            )
        }
    };
    let root = ctx
        .config
        .data_dir
        .join("artifacts")
        .join(step.execution_id.to_string());
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for name in &names {
        if !sources.iter().any(|s| &s.step_name == name) {
            kept.push(json!({"step": name, "reason": "the step has no run in this execution"}));
            continue;
        }
        // A ForEach's artifacts are those of its iterations' steps.
        let rows = sources
            .iter()
            .filter(|s| (&s.step_name == name && s.step_type != "ForEach") || s.parent.as_ref() == Some(name));
        for source in rows {
            let name = &source.step_name;
            if let Some(reason) = foreign(source) {
                kept.push(json!({"step": name, "reason": reason}));
                continue;
            }
            let Some(dir) = step_dir(&root, name) else {
                kept.push(json!({"step": name, "reason": "the step name does not name a directory"}));
                continue;
            };
            match remove(&dir).await {
                Ok(true) => removed.push(json!({"step": name, "path": dir.display().to_string()})),
                Ok(false) => kept.push(json!({
                    "step": name,
                    "reason": format!(
                        "nothing to remove: {} does not exist (the step left no artifacts in this execution, \
                         or they were removed already)",
                        dir.display()
                    ),
                })),
                Err(e) => {
                    return StepOutcome::failed(CLEANUP_FAILED, format!("cannot remove {}: {e}", dir.display()))
                        .with_metadata("cleanup", json!({"removed": removed, "kept": kept}))
                }
            }
        }
    }
    StepOutcome::Succeeded {
        properties: json!({}),
        metadata: json!({"cleanup": {"removed": removed, "kept": kept}}),
        exit_code: None,
        key: None,
    }
}

/// Why a step's artifacts are not this execution's to remove, if so.
fn foreign(source: &cleanup::CleanupSource) -> Option<String> {
    let from = |v: &Value| {
        v.get("source_execution_arn")
            .and_then(Value::as_str)
            .unwrap_or("another execution")
            .to_string()
    };
    if let Some(hit) = &source.cache_hit {
        return Some(format!(
            "a cache hit: its artifacts belong to {}, which keeps them",
            from(hit)
        ));
    }
    if let Some(reused) = &source.reused_from {
        return Some(format!(
            "reused: its artifacts belong to {}, which keeps them",
            from(reused)
        ));
    }
    None
}

/// `<data>/artifacts/<execution>/<step>`: every attempt's artifacts of the
/// step in this execution. `None` unless the name is one path component
/// (step names are validated so; this keeps a removal inside `root`).
fn step_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    ok.then(|| root.join(name))
}

/// Removes `dir` and what it holds; `false` when it was not there.
async fn remove(dir: &Path) -> std::io::Result<bool> {
    match tokio::fs::symlink_metadata(dir).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(true),
        // Removed meanwhile by another attempt: done all the same.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}
