//! Artifacts directories of step runs: where an `ArtifactsUri` points, and
//! whether the directory a run left is still there to be reused.

use std::path::PathBuf;

use serde_json::Value;

/// How many entries of an artifacts directory are counted when a step ends
/// (`metadata.command.artifact_entries`): enough to tell empty from not.
pub const ARTIFACT_ENTRIES_COUNTED: usize = 1000;

/// The directory an `ArtifactsUri` names (a `file://` prefix is accepted).
pub fn artifacts_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// The artifacts directory a run's outputs refer to, when it no longer
/// exists, or is empty although the step had left entries in it (recorded
/// as `metadata.command.artifact_entries` when it ended). `None` for a run
/// without artifacts or whose artifacts are there.
pub fn missing_artifacts(properties: Option<&Value>, metadata: &Value) -> Option<String> {
    let uri = properties?.get("ArtifactsUri")?.as_str()?;
    let left = metadata
        .pointer("/command/artifact_entries")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    missing(uri, left)
}

/// Whether the artifacts directory `uri`, in which the step had left `left`
/// entries, is gone or emptied: what is wrong with it, for people.
pub fn missing(uri: &str, left: u64) -> Option<String> {
    let path = artifacts_path(uri);
    if !path.exists() {
        return Some(format!("{} no longer exists", path.display()));
    }
    let empty = std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
    (left > 0 && empty).then(|| {
        format!(
            "{} is empty, and the step had left {left}{} entries in it",
            path.display(),
            if left as usize >= ARTIFACT_ENTRIES_COUNTED {
                " or more"
            } else {
                ""
            }
        )
    })
}
