//! Step caching at run time (SPEC 4): compute the key of a step from its
//! resolved arguments (and the content of its `CacheInputs`), look for a
//! recent entry with the same key, and record the decision with an
//! explanation when it misses.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{artifacts_path, inputs, StepContext, INPUT_ERROR};
use crate::{
    domain::{
        cache::{compute_key, explain_difference},
        definition::{CacheConfig, CommandArgs, StepKind},
        duration::cache_valid_since,
    },
    engine::StepOutcome,
    store::{
        cache::{self, Entry, KeyRecord},
        StoreResult,
    },
};

pub enum Decision {
    Run,
    Hit(StepOutcome),
    Fail(StepOutcome),
}

/// Decides whether the claimed step runs or is served from the cache.
/// `resolved` holds secrets as markers (name and keyed digest) and makes the
/// key; `revealed` is what the process gets, read for its working directory
/// and `CacheInputs` only.
pub async fn decide(
    ctx: &StepContext<'_>,
    kind: StepKind,
    resolved: &Value,
    revealed: &Value,
) -> StoreResult<Decision> {
    let step = ctx.step;
    let config: Option<CacheConfig> = step.cache_config.clone().and_then(|c| serde_json::from_value(c).ok());
    let Some(config) = config.filter(|c| c.enabled && kind.is_cacheable()) else {
        return Ok(Decision::Run);
    };
    let mut hashes = BTreeMap::new();
    if kind == StepKind::Command {
        let args = match CommandArgs::from_resolved(revealed) {
            Ok(a) => a,
            Err(m) => return Ok(Decision::Fail(StepOutcome::failed(INPUT_ERROR, m))),
        };
        let limits = inputs::Limits {
            max_bytes: ctx.config.worker.cache_input_max_bytes,
            timeout: Duration::from_secs(ctx.config.worker.cache_input_timeout_seconds),
        };
        match inputs::hash_inputs(args.working_directory.as_deref(), &args.cache_inputs, limits).await {
            Ok(h) => hashes = h,
            Err(m) => {
                let message = format!("CacheInputs: {m}");
                return Ok(Decision::Fail(StepOutcome::failed(INPUT_ERROR, message)));
            }
        }
    }
    let key = compute_key(kind, &step.arguments, resolved, &hashes);
    let warnings = json!(key.warnings);
    let status = if step.cache_mode == "off" {
        "disabled"
    } else if step.cache_mode == "refresh" || step.bypass_cache {
        "bypassed"
    } else {
        "miss"
    };
    let mut record = KeyRecord {
        key: &key.key,
        components: &key.components,
        status,
        miss_reason: None,
        warnings: &warnings,
        hit: None,
    };
    if status != "miss" {
        cache::record(ctx.db, step.id, step.attempt, &record).await?;
        return Ok(Decision::Run);
    }

    let mut conn = ctx.db.acquire().await?;
    let earliest = cache_valid_since(config.expire_after, ctx.config.cache.max_expire_after, Utc::now());
    let candidates = cache::entries_with_key(&mut conn, step.pipeline_id, &step.step_name, &key.key, 20).await?;
    let mut expired_entry: Option<&Entry> = None;
    let mut artifacts_gone: Option<(&Entry, String)> = None;
    for entry in &candidates {
        if expired(entry, earliest) {
            expired_entry.get_or_insert(entry);
            continue;
        }
        if let Some(missing) = missing_artifacts(entry) {
            artifacts_gone.get_or_insert((entry, missing));
            continue;
        }
        let hit = json!({
            "source_execution_arn": ctx.arns.execution(&entry.pipeline_name, entry.execution_id),
            "source_step_run_id": entry.id,
        });
        record.status = "hit";
        record.hit = Some(&hit);
        cache::record(ctx.db, step.id, step.attempt, &record).await?;
        return Ok(Decision::Hit(StepOutcome::Succeeded {
            properties: entry.properties.clone().unwrap_or(json!({})),
            metadata: entry.metadata.clone(),
            exit_code: None,
        }));
    }

    let reason = if let Some((entry, path)) = artifacts_gone {
        format!(
            "the entry from execution {} has lost its artifacts ({path})",
            entry.execution_id
        )
    } else if let Some(entry) = expired_entry {
        format!(
            "the entry from execution {} (ended {}) is older than ExpireAfter (at most cache.max_expire_after)",
            entry.execution_id,
            entry.ended_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        )
    } else {
        match cache::nearest_entry(&mut conn, step.pipeline_id, &step.step_name).await? {
            None => format!("no earlier cache entry for step {:?} in this pipeline", step.step_name),
            Some(previous) => {
                let before = previous.cache_components.clone().unwrap_or(Value::Null);
                match explain_difference(&key.components, &before) {
                    Some(diff) => format!("differs from the entry of execution {}: {diff}", previous.execution_id),
                    None => format!("the entry of execution {} is no longer usable", previous.execution_id),
                }
            }
        }
    };
    record.miss_reason = Some(&reason);
    cache::record(ctx.db, step.id, step.attempt, &record).await?;
    Ok(Decision::Run)
}

/// Whether an entry ended before `earliest`, the oldest end its step's
/// `ExpireAfter` and the server's cap allow (`cache_valid_since`).
pub fn expired(entry: &Entry, earliest: DateTime<Utc>) -> bool {
    entry.ended_at.is_some_and(|t| t < earliest)
}

/// The artifacts directory an entry refers to, when it no longer exists, or
/// is empty although the step had left entries in it (recorded as
/// `metadata.command.artifact_entries` when it ended).
pub fn missing_artifacts(entry: &Entry) -> Option<String> {
    let uri = entry.properties.as_ref()?.get("ArtifactsUri")?.as_str()?;
    let path = artifacts_path(uri);
    if !path.exists() {
        return Some(path.display().to_string());
    }
    let left = entry
        .metadata
        .pointer("/command/artifact_entries")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let empty = std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
    (left > 0 && empty).then(|| {
        format!(
            "{} is empty, and the step had left {left}{} entries in it",
            path.display(),
            if left as usize >= super::command::ARTIFACT_ENTRIES_COUNTED {
                " or more"
            } else {
                ""
            }
        )
    })
}
