//! What the service reads from the shared data directory to decide about
//! steps, used by the worker and by the plan and start alike (one way to
//! hash, one way to check): the content hashes of `CacheInputs`, and
//! whether a run's artifacts directory is still there.

pub mod artifacts;
pub mod inputs;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    domain::{
        cache::{compute_key, CacheKey},
        definition::{cache_input_paths, StepKind},
    },
    store::cache::Entry,
};

/// The cache key of a step run from its resolved arguments, hashing the
/// content of a Command's `CacheInputs`: what the worker computes and the
/// plan predicts, one way. `resolved` (secrets as markers) makes the key;
/// `revealed` (what the process gets, or `resolved` when planning) says
/// where the inputs are. An error
/// says what is wrong with the inputs.
pub async fn step_key(
    kind: StepKind,
    raw: &Value,
    resolved: &Value,
    revealed: &Value,
    limits: inputs::Limits,
) -> Result<CacheKey, String> {
    let mut hashes = BTreeMap::new();
    if kind == StepKind::Command {
        let (working_directory, paths) = cache_input_paths(revealed)?;
        if !paths.is_empty() {
            hashes = inputs::hash_inputs(working_directory.as_deref(), &paths, limits)
                .await
                .map_err(|m| format!("CacheInputs: {m}"))?;
        }
    }
    Ok(compute_key(kind, raw, resolved, &hashes))
}

/// Why a cache entry with the right key cannot be used.
pub enum Unusable {
    /// It ended before the oldest end its step's `ExpireAfter` (capped by
    /// `cache.max_expire_after`) allows.
    Expired,
    /// Its artifacts directory is gone or emptied: what is wrong with it.
    ArtifactsGone(String),
}

/// Whether `entry` can serve a hit, given the oldest end still valid.
pub fn usable(entry: &Entry, earliest: DateTime<Utc>) -> Result<(), Unusable> {
    if entry.ended_at.is_some_and(|t| t < earliest) {
        return Err(Unusable::Expired);
    }
    match artifacts::missing_artifacts(entry.properties.as_ref(), &entry.metadata) {
        Some(gone) => Err(Unusable::ArtifactsGone(gone)),
        None => Ok(()),
    }
}
