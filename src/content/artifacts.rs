//! Artifacts directories of step runs: where an `ArtifactsUri` points, and
//! whether the directory a run left is still there to be reused.

use std::path::{Path, PathBuf};

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
    // Only a directory the step had left entries in can have been emptied.
    let empty = || std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
    (left > 0 && empty()).then(|| {
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

/// `Std:JsonGet` on a step's artifacts: the JSON file `file` of the
/// artifacts directory named by the step's properties (`None` when the step
/// has none in this execution), read as the worker and the plan both do.
pub fn read_json(properties: Option<&Value>, step: &str, file: &str, max: u64) -> Result<Value, String> {
    let properties = properties.ok_or_else(|| format!("step {step:?} has no properties in this execution"))?;
    let uri = properties
        .get("ArtifactsUri")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("step {step:?} has no ArtifactsUri"))?;
    let dir = artifacts_path(uri);
    let text = read_small_file(&dir.join(file), &dir, max)
        .map_err(|e| format!("cannot read {file:?} from the artifacts of step {step:?}: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| {
        let why = crate::domain::json_syntax_error(&e);
        format!("{file:?} in the artifacts of step {step:?} is not JSON: {why}")
    })
}

/// Reads a regular file of at most `max` bytes that lies inside `within`.
/// Evaluation is synchronous, so this must not block: anything but a
/// regular file (a FIFO, a device) is refused before it is opened, and it is
/// opened non-blocking in case it was swapped for one in between. The step
/// owns its artifacts directory (with `worker.run_as_user`, as another
/// user): a symbolic link it left there must not make this process read a
/// file the step itself cannot, so the file actually opened must be inside
/// `within`.
pub fn read_small_file(path: &Path, within: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    let not_regular = || Error::new(ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if !opened.starts_with(std::fs::canonicalize(within)?) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "it leads (through a symbolic link) outside the step's artifacts directory",
        ));
    }
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > max {
        let message = format!("it holds {} bytes, more than {max}", meta.len());
        return Err(Error::new(ErrorKind::InvalidInput, message));
    }
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    Ok(buf)
}
